// A multi-threaded Registered I/O UDP server with completion-port
// notification, written for Windows: one socket, one RIO completion queue
// whose notification is a packet on an I/O completion port, and a pool of
// threads waiting on that port. The thread that takes the notification
// dequeues up to CAP results, counts them, re-posts their receives, and calls
// RIONotify again; meanwhile no other thread touches the queue.
//
// Fed by `ringport load udp-blast --addr 127.0.0.1:PORT`, whose end marker (a
// datagram of another size starting "RPORTEND" and carrying the number sent)
// stops it. Usage: rio_udp_server PORT [THREADS] [SIZE]
#include <winsock2.h>
#include <mswsock.h>
#include <windows.h>

#define PENDING 1024
#define SLOT 2048
#define CAP 128
#define KEY_CQ 1
#define KEY_STOP 2
#define MAX_THREADS 64

static RIO_EXTENSION_FUNCTION_TABLE rio;
static HANDLE g_port;
static RIO_CQ g_cq;
static RIO_RQ g_rq;
static char *g_memory;
static RIO_BUF g_slots[PENDING];
static OVERLAPPED g_notify_ov;
static DWORD g_threads;
static DWORD g_size = 1024;

static volatile LONG64 g_received = 0;
static volatile LONG64 g_other = 0;
static volatile LONG64 g_errors = 0;
static volatile LONG64 g_sent = -1;
static volatile LONG64 g_max_seq = -1;
static volatile LONG g_stopping = 0;

struct ThreadStats {
    DWORD id;
    LONG64 notifications;
    LONG64 results;
};
static ThreadStats g_stats[MAX_THREADS];

static void Count(const RIORESULT &r) {
    const char *data = g_memory + (ULONG_PTR)r.RequestContext * SLOT;
    if (r.Status != 0) {
        InterlockedIncrement64(&g_errors);
    } else if (r.BytesTransferred == g_size) {
        InterlockedIncrement64(&g_received);
        if (g_size >= 8) {
            LONG64 seq;
            memcpy(&seq, data, 8);
            LONG64 seen = g_max_seq;
            while (seq > seen && InterlockedCompareExchange64(&g_max_seq, seq, seen) != seen)
                seen = g_max_seq;
        }
    } else if (r.BytesTransferred >= 16 && memcmp(data, "RPORTEND", 8) == 0) {
        LONG64 sent;
        memcpy(&sent, data + 8, 8);
        InterlockedExchange64(&g_sent, sent);
        InterlockedExchange(&g_stopping, 1);
    } else {
        InterlockedIncrement64(&g_other);
    }
}

static DWORD WINAPI Worker(LPVOID param) {
    ThreadStats *stats = &g_stats[(INT_PTR)param];
    stats->id = GetCurrentThreadId();
    RIORESULT results[CAP];
    for (;;) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        if (!GetQueuedCompletionStatus(g_port, &bytes, &key, &ov, INFINITE)) {
            printf("GetQueuedCompletionStatus failed: %lu\n", (unsigned long)GetLastError());
            return 1;
        }
        if (key == KEY_STOP)
            return 0;
        stats->notifications++;
        // This thread owns the queue until it calls RIONotify again.
        for (;;) {
            ULONG n = rio.RIODequeueCompletion(g_cq, results, CAP);
            if (n == RIO_CORRUPT_CQ) {
                printf("RIODequeueCompletion: corrupt queue\n");
                return 1;
            }
            stats->results += n;
            for (ULONG i = 0; i < n; i++) {
                Count(results[i]);
                ULONG_PTR slot = (ULONG_PTR)results[i].RequestContext;
                // Batch the re-posts; the commit below submits them at once.
                if (!rio.RIOReceive(g_rq, &g_slots[slot], 1, RIO_MSG_DEFER, (PVOID)slot)) {
                    printf("RIOReceive failed: %d\n", WSAGetLastError());
                    return 1;
                }
            }
            if (n > 0 && !rio.RIOReceive(g_rq, NULL, 0, RIO_MSG_COMMIT_ONLY, NULL)) {
                printf("RIOReceive commit failed: %d\n", WSAGetLastError());
                return 1;
            }
            // After the end marker, drain what is left; otherwise one batch per
            // notification, up to the cap.
            if (!g_stopping || n == 0)
                break;
        }
        if (g_stopping) {
            for (DWORD i = 0; i < g_threads; i++)
                PostQueuedCompletionStatus(g_port, 0, KEY_STOP, NULL);
            return 0;
        }
        INT e = rio.RIONotify(g_cq);
        if (e != ERROR_SUCCESS) {
            printf("RIONotify failed: %d\n", e);
            return 1;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: rio_udp_server PORT [THREADS] [SIZE]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    g_threads = argc > 2 ? (DWORD)atoi(argv[2]) : 0;
    if (argc > 3)
        g_size = (DWORD)atoi(argv[3]);
    if (g_threads == 0) {
        SYSTEM_INFO si;
        GetSystemInfo(&si);
        g_threads = si.dwNumberOfProcessors;
    }
    if (g_threads > MAX_THREADS)
        g_threads = MAX_THREADS;

    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0)
        return 1;
    SOCKET s = WSASocket(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_REGISTERED_IO);
    if (s == INVALID_SOCKET) {
        printf("WSASocket failed: %d\n", WSAGetLastError());
        return 1;
    }
    int rcvbuf = 8 << 20;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, (const char *)&rcvbuf, sizeof(rcvbuf));
    SOCKADDR_IN addr;
    ZeroMemory(&addr, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((u_short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (SOCKADDR *)&addr, sizeof(addr)) == SOCKET_ERROR) {
        printf("bind failed: %d\n", WSAGetLastError());
        return 1;
    }

    GUID id = WSAID_MULTIPLE_RIO;
    DWORD got = 0;
    if (WSAIoctl(s, SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER, &id, sizeof(id), &rio,
                 sizeof(rio), &got, NULL, NULL) == SOCKET_ERROR) {
        printf("WSAIoctl(RIO) failed: %d\n", WSAGetLastError());
        return 1;
    }

    g_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    g_memory = new char[PENDING * SLOT];
    RIO_BUFFERID buffer = rio.RIORegisterBuffer(g_memory, PENDING * SLOT);
    if (buffer == RIO_INVALID_BUFFERID) {
        printf("RIORegisterBuffer failed: %d\n", WSAGetLastError());
        return 1;
    }
    RIO_NOTIFICATION_COMPLETION notify;
    ZeroMemory(&notify, sizeof(notify));
    notify.Type = RIO_IOCP_COMPLETION;
    notify.Iocp.IocpHandle = g_port;
    notify.Iocp.CompletionKey = (PVOID)KEY_CQ;
    notify.Iocp.Overlapped = &g_notify_ov;
    g_cq = rio.RIOCreateCompletionQueue(PENDING, &notify);
    if (g_cq == RIO_INVALID_CQ) {
        printf("RIOCreateCompletionQueue failed: %d\n", WSAGetLastError());
        return 1;
    }
    g_rq = rio.RIOCreateRequestQueue(s, PENDING, 1, 1, 1, g_cq, g_cq, NULL);
    if (g_rq == RIO_INVALID_RQ) {
        // PENDING receives + 1 send would not fit a CQ of PENDING: retry without sends.
        g_rq = rio.RIOCreateRequestQueue(s, PENDING, 1, 0, 1, g_cq, g_cq, NULL);
    }
    if (g_rq == RIO_INVALID_RQ) {
        printf("RIOCreateRequestQueue failed: %d\n", WSAGetLastError());
        return 1;
    }
    for (ULONG i = 0; i < PENDING; i++) {
        g_slots[i].BufferId = buffer;
        g_slots[i].Offset = i * SLOT;
        g_slots[i].Length = SLOT;
        if (!rio.RIOReceive(g_rq, &g_slots[i], 1, RIO_MSG_DEFER, (PVOID)(ULONG_PTR)i)) {
            printf("RIOReceive failed: %d\n", WSAGetLastError());
            return 1;
        }
    }
    rio.RIOReceive(g_rq, NULL, 0, RIO_MSG_COMMIT_ONLY, NULL);
    if (rio.RIONotify(g_cq) != ERROR_SUCCESS) {
        printf("RIONotify failed\n");
        return 1;
    }

    HANDLE threads[MAX_THREADS];
    for (DWORD i = 0; i < g_threads; i++)
        threads[i] = CreateThread(NULL, 0, Worker, (LPVOID)(INT_PTR)i, 0, NULL);
    printf("ready: port %d, %lu threads, %d receives of %d bytes\n", port,
           (unsigned long)g_threads, PENDING, SLOT);
    fflush(stdout);

    DWORD w = WaitForMultipleObjects(g_threads, threads, TRUE, 120000);
    if (w != WAIT_OBJECT_0) {
        printf("timed out waiting for the end marker (received %I64d)\n", g_received);
        return 1;
    }
    BOOL ok = TRUE;
    for (DWORD i = 0; i < g_threads; i++) {
        DWORD code = 1;
        GetExitCodeThread(threads[i], &code);
        ok = ok && code == 0;
        CloseHandle(threads[i]);
    }

    LONG64 sent = g_sent;
    printf("received %I64d of %I64d datagrams of %lu bytes (%I64d lost), %I64d other, %I64d errors\n",
           g_received, sent, (unsigned long)g_size, sent - g_received, g_other, g_errors);
    printf("thread     notifications    results\n");
    for (DWORD i = 0; i < g_threads; i++)
        printf("%-10lu %13I64d %10I64d\n", (unsigned long)g_stats[i].id,
               g_stats[i].notifications, g_stats[i].results);

    closesocket(s);
    rio.RIOCloseCompletionQueue(g_cq);
    rio.RIODeregisterBuffer(buffer);
    CloseHandle(g_port);
    delete[] g_memory;
    WSACleanup();

    if (!ok || sent <= 0 || g_received <= 0 || g_received > sent || g_errors != 0 ||
        (g_size >= 8 && g_max_seq >= sent)) {
        printf("FAILED\n");
        return 1;
    }
    return 0;
}
