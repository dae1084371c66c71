// The error codes Windows documents for completion ports, overlapped Winsock
// and Registered I/O, checked through the Win32-shaped API. Exits non-zero on
// the first failure.
#include <winsock2.h>
#include <mswsock.h>
#include <windows.h>

static int g_failures = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            printf("FAILED %s:%d: %s (GetLastError %lu)\n", __FILE__, __LINE__, #cond, \
                   (unsigned long)GetLastError());                                    \
            g_failures++;                                                             \
        }                                                                             \
    } while (0)

static RIO_EXTENSION_FUNCTION_TABLE rio;

struct Waiter {
    HANDLE port;
    BOOL ok;
    DWORD error;
    LPOVERLAPPED ov;
};

static DWORD WINAPI WaitOnPort(LPVOID p) {
    Waiter *w = (Waiter *)p;
    DWORD bytes;
    ULONG_PTR key;
    w->ov = (LPOVERLAPPED)1;
    w->ok = GetQueuedCompletionStatus(w->port, &bytes, &key, &w->ov, INFINITE);
    w->error = GetLastError();
    return 0;
}

static void PortErrors() {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    CHECK(port != NULL);
    DWORD bytes = 1;
    ULONG_PTR key = 1;
    LPOVERLAPPED ov = (LPOVERLAPPED)1;
    // A timeout: FALSE, WAIT_TIMEOUT, and no OVERLAPPED.
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &ov, 50));
    CHECK(GetLastError() == WAIT_TIMEOUT);
    CHECK(ov == NULL);
    OVERLAPPED_ENTRY entries[4];
    ULONG removed = 9;
    CHECK(!GetQueuedCompletionStatusEx(port, entries, 4, &removed, 0, FALSE));
    CHECK(GetLastError() == WAIT_TIMEOUT);
    // A posted packet comes back as posted.
    OVERLAPPED mine;
    CHECK(PostQueuedCompletionStatus(port, 42, 7, &mine));
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 1000));
    CHECK(bytes == 42 && key == 7 && ov == &mine);
    // Several at once.
    for (int i = 0; i < 3; i++)
        PostQueuedCompletionStatus(port, i, 100 + i, NULL);
    CHECK(GetQueuedCompletionStatusEx(port, entries, 4, &removed, 1000, FALSE));
    CHECK(removed == 3 && entries[0].lpCompletionKey == 100 && entries[2].dwNumberOfBytesTransferred == 2);

    // Closing the port under a waiter: FALSE with ERROR_ABANDONED_WAIT_0.
    Waiter w = {port, TRUE, 0, NULL};
    HANDLE t = CreateThread(NULL, 0, WaitOnPort, &w, 0, NULL);
    Sleep(100);
    CHECK(CloseHandle(port));
    CHECK(WaitForSingleObject(t, 5000) == WAIT_OBJECT_0);
    CHECK(!w.ok);
    CHECK(w.error == ERROR_ABANDONED_WAIT_0);
    CHECK(w.ov == NULL);
    CloseHandle(t);
    // The handle is gone now.
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &ov, 0));
    CHECK(GetLastError() == ERROR_INVALID_HANDLE);
    CHECK(!CloseHandle(port));
}

static SOCKET UdpSocket(SOCKADDR_IN *addr, DWORD flags) {
    SOCKET s = WSASocket(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, flags);
    ZeroMemory(addr, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(s, (SOCKADDR *)addr, sizeof(*addr)) == 0);
    int len = sizeof(*addr);
    CHECK(getsockname(s, (SOCKADDR *)addr, &len) == 0);
    return s;
}

static void OverlappedUdp() {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    SOCKADDR_IN addr, peer;
    SOCKET rx = UdpSocket(&addr, WSA_FLAG_OVERLAPPED);
    SOCKET tx = UdpSocket(&peer, WSA_FLAG_OVERLAPPED);
    CHECK(CreateIoCompletionPort((HANDLE)rx, port, 5, 0) == port);
    CHECK(CreateIoCompletionPort((HANDLE)tx, port, 6, 0) == port);

    // A receive: the bytes land in the caller's WSABUFs, the sender's
    // address in lpFrom, by the time GetQueuedCompletionStatus returns.
    char a[3], b[16];
    WSABUF bufs[2] = {{sizeof(a), a}, {sizeof(b), b}};
    DWORD flags = 0, n = 0;
    SOCKADDR_IN from;
    int fromlen = sizeof(from);
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof(ov));
    CHECK(WSARecvFrom(rx, bufs, 2, &n, &flags, (SOCKADDR *)&from, &fromlen, &ov, NULL) == SOCKET_ERROR);
    CHECK(WSAGetLastError() == WSA_IO_PENDING);
    char hello[] = "hello, world";
    WSABUF out = {12, hello};
    OVERLAPPED sov;
    ZeroMemory(&sov, sizeof(sov));
    int r = WSASendTo(tx, &out, 1, &n, 0, (SOCKADDR *)&addr, sizeof(addr), &sov, NULL);
    CHECK(r == 0 || WSAGetLastError() == WSA_IO_PENDING);
    BOOL seen_recv = FALSE, seen_send = FALSE;
    for (int i = 0; i < 2; i++) {
        DWORD bytes;
        ULONG_PTR key;
        LPOVERLAPPED got;
        CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &got, 5000));
        if (got == &ov) {
            seen_recv = TRUE;
            CHECK(key == 5 && bytes == 12);
            CHECK(memcmp(a, "hel", 3) == 0 && memcmp(b, "lo, world", 9) == 0);
            CHECK(fromlen == sizeof(SOCKADDR_IN) && from.sin_port == peer.sin_port);
            DWORD t;
            CHECK(WSAGetOverlappedResult(rx, &ov, &t, FALSE, &flags) && t == 12);
        } else if (got == &sov) {
            seen_send = TRUE;
            CHECK(key == 6 && bytes == 12);
        }
    }
    CHECK(seen_recv && seen_send);

    // A datagram longer than the buffer: FALSE, WSAEMSGSIZE, the bytes that fit.
    WSABUF small = {4, b};
    CHECK(WSARecvFrom(rx, &small, 1, &n, &flags, NULL, NULL, &ov, NULL) == SOCKET_ERROR);
    CHECK(sendto(tx, hello, 12, 0, (SOCKADDR *)&addr, sizeof(addr)) == 12);
    DWORD bytes;
    ULONG_PTR key;
    LPOVERLAPPED got;
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 5000));
    CHECK(GetLastError() == WSAEMSGSIZE && got == &ov && bytes == 4 && memcmp(b, "hell", 4) == 0);

    // A cancelled receive: FALSE, ERROR_OPERATION_ABORTED, its OVERLAPPED.
    CHECK(WSARecv(rx, &small, 1, &n, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK(CancelIoEx((HANDLE)rx, &ov));
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 5000));
    CHECK(GetLastError() == ERROR_OPERATION_ABORTED && got == &ov);
    CHECK(!CancelIoEx((HANDLE)rx, &ov));
    CHECK(GetLastError() == ERROR_NOT_FOUND);

    // Skip-on-success: a send that completes at once returns 0, no packet.
    CHECK(SetFileCompletionNotificationModes((HANDLE)tx, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS));
    n = 0;
    CHECK(WSASendTo(tx, &out, 1, &n, 0, (SOCKADDR *)&addr, sizeof(addr), &sov, NULL) == 0);
    CHECK(n == 12);
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 100));
    CHECK(GetLastError() == WAIT_TIMEOUT);

    closesocket(rx);
    closesocket(tx);
    CloseHandle(port);
}

static void TcpAcceptEx() {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    SOCKET listener = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKADDR_IN addr;
    ZeroMemory(&addr, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(listener, (SOCKADDR *)&addr, sizeof(addr)) == 0);
    int len = sizeof(addr);
    CHECK(getsockname(listener, (SOCKADDR *)&addr, &len) == 0);
    CHECK(listen(listener, SOMAXCONN) == 0);
    CHECK(CreateIoCompletionPort((HANDLE)listener, port, 1, 0) == port);

    LPFN_ACCEPTEX acceptEx = NULL;
    LPFN_GETACCEPTEXSOCKADDRS getAddrs = NULL;
    GUID ga = WSAID_ACCEPTEX, gs = WSAID_GETACCEPTEXSOCKADDRS;
    DWORD got = 0;
    CHECK(WSAIoctl(listener, SIO_GET_EXTENSION_FUNCTION_POINTER, &ga, sizeof(ga), &acceptEx,
                   sizeof(acceptEx), &got, NULL, NULL) == 0);
    CHECK(WSAIoctl(listener, SIO_GET_EXTENSION_FUNCTION_POINTER, &gs, sizeof(gs), &getAddrs,
                   sizeof(getAddrs), &got, NULL, NULL) == 0);
    SOCKET accepted = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    char out[2 * (sizeof(SOCKADDR_IN6) + 16)];
    DWORD n = 0;
    OVERLAPPED aov;
    ZeroMemory(&aov, sizeof(aov));
    const DWORD alen = sizeof(SOCKADDR_IN6) + 16;
    CHECK(!acceptEx(listener, accepted, out, 0, alen, alen, &n, &aov));
    CHECK(WSAGetLastError() == ERROR_IO_PENDING);

    SOCKET client = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, 0);
    CHECK(connect(client, (SOCKADDR *)&addr, sizeof(addr)) == 0);
    DWORD bytes;
    ULONG_PTR key;
    LPOVERLAPPED ov;
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000));
    CHECK(key == 1 && ov == &aov);
    CHECK(setsockopt(accepted, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&listener,
                     sizeof(listener)) == 0);
    SOCKADDR *local, *remote;
    int llen, rlen;
    getAddrs(out, 0, alen, alen, &local, &llen, &remote, &rlen);
    CHECK(llen == sizeof(SOCKADDR_IN) && ((SOCKADDR_IN *)local)->sin_port == addr.sin_port);
    SOCKADDR_IN cname;
    int clen = sizeof(cname);
    getsockname(client, (SOCKADDR *)&cname, &clen);
    CHECK(rlen == sizeof(SOCKADDR_IN) && ((SOCKADDR_IN *)remote)->sin_port == cname.sin_port);

    // Echo through the accepted socket with overlapped WSARecv/WSASend.
    CHECK(CreateIoCompletionPort((HANDLE)accepted, port, 2, 0) == port);
    char buf[64];
    WSABUF wb = {sizeof(buf), buf};
    DWORD flags = 0;
    OVERLAPPED rov;
    ZeroMemory(&rov, sizeof(rov));
    CHECK(WSARecv(accepted, &wb, 1, &n, &flags, &rov, NULL) == SOCKET_ERROR);
    CHECK(send(client, "ping", 4, 0) == 4);
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000));
    CHECK(key == 2 && ov == &rov && bytes == 4 && memcmp(buf, "ping", 4) == 0);
    WSABUF reply = {4, (char *)"pong"};
    CHECK(WSASend(accepted, &reply, 1, &n, 0, &rov, NULL) == SOCKET_ERROR);
    CHECK(WSAGetLastError() == WSA_IO_PENDING);
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000) && bytes == 4);
    char back[8] = {0};
    CHECK(recv(client, back, sizeof(back), 0) == 4 && memcmp(back, "pong", 4) == 0);
    // The peer closes: a receive completes with 0 bytes.
    CHECK(WSARecv(accepted, &wb, 1, &n, &flags, &rov, NULL) == SOCKET_ERROR);
    closesocket(client);
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000) && bytes == 0);
    closesocket(accepted);

    // AcceptEx with a receive: the packet comes with the first data.
    SOCKET second = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    char out2[64 + 2 * alen];
    CHECK(!acceptEx(listener, second, out2, 64, alen, alen, &n, &aov));
    CHECK(WSAGetLastError() == ERROR_IO_PENDING);
    client = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, 0);
    CHECK(connect(client, (SOCKADDR *)&addr, sizeof(addr)) == 0);
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &ov, 200));
    CHECK(GetLastError() == WAIT_TIMEOUT);
    CHECK(send(client, "first", 5, 0) == 5);
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000));
    CHECK(key == 1 && ov == &aov && bytes == 5 && memcmp(out2, "first", 5) == 0);
    getAddrs(out2, 64, alen, alen, &local, &llen, &remote, &rlen);
    getsockname(client, (SOCKADDR *)&cname, &clen);
    CHECK(((SOCKADDR_IN *)local)->sin_port == addr.sin_port);
    CHECK(((SOCKADDR_IN *)remote)->sin_port == cname.sin_port);
    // The accept socket is the connection, and can be associated now.
    CHECK(CreateIoCompletionPort((HANDLE)second, port, 3, 0) == port);
    CHECK(WSASend(second, &reply, 1, &n, 0, &rov, NULL) == SOCKET_ERROR);
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000) && key == 3 && bytes == 4);
    CHECK(recv(client, back, sizeof(back), 0) == 4 && memcmp(back, "pong", 4) == 0);
    closesocket(client);
    closesocket(second);
    closesocket(listener);
    CloseHandle(port);
}

static void RioErrors() {
    SOCKADDR_IN addr, peer;
    SOCKET s = UdpSocket(&addr, WSA_FLAG_REGISTERED_IO);
    SOCKET tx = UdpSocket(&peer, 0);
    GUID id = WSAID_MULTIPLE_RIO;
    DWORD got = 0;
    CHECK(WSAIoctl(s, SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER, &id, sizeof(id), &rio,
                   sizeof(rio), &got, NULL, NULL) == 0);
    CHECK(got == sizeof(rio) && rio.cbSize == sizeof(rio));

    static char memory[4096];
    RIO_BUFFERID buf = rio.RIORegisterBuffer(memory, sizeof(memory));
    CHECK(buf != RIO_INVALID_BUFFERID);

    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    OVERLAPPED nov;
    RIO_NOTIFICATION_COMPLETION nc;
    ZeroMemory(&nc, sizeof(nc));
    nc.Type = RIO_IOCP_COMPLETION;
    nc.Iocp.IocpHandle = port;
    nc.Iocp.CompletionKey = (PVOID)77;
    nc.Iocp.Overlapped = &nov;
    RIO_CQ cq = rio.RIOCreateCompletionQueue(8, &nc);
    CHECK(cq != RIO_INVALID_CQ);

    // A completion queue too small for the request queue's outstanding requests.
    RIO_RQ rq = rio.RIOCreateRequestQueue(s, 8, 1, 8, 1, cq, cq, (PVOID)1);
    CHECK(rq == RIO_INVALID_RQ);
    CHECK(WSAGetLastError() == WSAENOBUFS);
    rq = rio.RIOCreateRequestQueue(s, 4, 1, 4, 1, cq, cq, (PVOID)99);
    CHECK(rq != RIO_INVALID_RQ);

    // A RIO_BUF outside its buffer.
    RIO_BUF outside = {buf, 4000, 200};
    CHECK(!rio.RIOReceive(rq, &outside, 1, 0, NULL));
    CHECK(WSAGetLastError() == WSAEINVAL);
    RIO_BUF bogus = {(RIO_BUFFERID)(ULONG_PTR)12345, 0, 10};
    CHECK(!rio.RIOReceive(rq, &bogus, 1, 0, NULL));
    CHECK(WSAGetLastError() == WSAEINVAL);

    // More receives than the queue allows.
    RIO_BUF slots[5];
    for (int i = 0; i < 5; i++) {
        slots[i].BufferId = buf;
        slots[i].Offset = i * 512;
        slots[i].Length = 512;
    }
    for (int i = 0; i < 4; i++)
        CHECK(rio.RIOReceive(rq, &slots[i], 1, 0, (PVOID)(ULONG_PTR)(10 + i)));
    CHECK(!rio.RIOReceive(rq, &slots[4], 1, 0, NULL));
    CHECK(WSAGetLastError() == WSAENOBUFS);

    // RIONotify while armed; RIODequeueCompletion while armed.
    CHECK(rio.RIONotify(cq) == ERROR_SUCCESS);
    CHECK(rio.RIONotify(cq) == WSAEALREADY);
    RIORESULT results[8];
    CHECK(rio.RIODequeueCompletion(cq, results, 8) == RIO_CORRUPT_CQ);

    // The notification comes as a packet; the data is in the caller's memory.
    CHECK(sendto(tx, "registered", 10, 0, (SOCKADDR *)&addr, sizeof(addr)) == 10);
    DWORD bytes;
    ULONG_PTR key;
    LPOVERLAPPED ov;
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &ov, 5000));
    CHECK(key == 77 && ov == &nov);
    ULONG n = rio.RIODequeueCompletion(cq, results, 8);
    CHECK(n == 1);
    if (n == 1) {
        CHECK(results[0].Status == 0 && results[0].BytesTransferred == 10);
        CHECK(results[0].SocketContext == 99);
        ULONG_PTR slot = (ULONG_PTR)results[0].RequestContext - 10;
        CHECK(slot < 4 && memcmp(memory + slot * 512, "registered", 10) == 0);
    }

    // Resizing: a queue cannot shrink below what is charged to it.
    CHECK(!rio.RIOResizeCompletionQueue(cq, 4));
    CHECK(rio.RIOResizeCompletionQueue(cq, 16));
    CHECK(rio.RIOResizeRequestQueue(rq, 8, 8));

    // A buffer with requests in flight cannot be deregistered; closing the
    // socket aborts them.
    closesocket(s);
    Sleep(50);
    n = rio.RIODequeueCompletion(cq, results, 8);
    CHECK(n == 3);
    for (ULONG i = 0; i < n && i < 8; i++)
        CHECK(results[i].Status == WSA_OPERATION_ABORTED);
    rio.RIOCloseCompletionQueue(cq);
    rio.RIODeregisterBuffer(buf);
    closesocket(tx);
    CloseHandle(port);
}

static void RioEvent() {
    SOCKADDR_IN addr, peer;
    SOCKET s = UdpSocket(&addr, WSA_FLAG_REGISTERED_IO);
    SOCKET tx = UdpSocket(&peer, 0);
    static char memory[2048];
    static char names[2 * sizeof(SOCKADDR_INET)];
    RIO_BUFFERID buf = rio.RIORegisterBuffer(memory, sizeof(memory));
    RIO_BUFFERID nbuf = rio.RIORegisterBuffer(names, sizeof(names));
    HANDLE event = CreateEvent(NULL, FALSE, FALSE, NULL);
    RIO_NOTIFICATION_COMPLETION nc;
    ZeroMemory(&nc, sizeof(nc));
    nc.Type = RIO_EVENT_COMPLETION;
    nc.Event.EventHandle = event;
    nc.Event.NotifyReset = TRUE;
    RIO_CQ cq = rio.RIOCreateCompletionQueue(4, &nc);
    CHECK(cq != RIO_INVALID_CQ);
    RIO_RQ rq = rio.RIOCreateRequestQueue(s, 2, 1, 2, 1, cq, cq, (PVOID)5);
    CHECK(rq != RIO_INVALID_RQ);
    RIO_BUF data = {buf, 0, 1024};
    RIO_BUF remote = {nbuf, 0, sizeof(SOCKADDR_INET)};
    CHECK(rio.RIOReceiveEx(rq, &data, 1, NULL, &remote, NULL, NULL, 0, (PVOID)3));
    CHECK(rio.RIONotify(cq) == 0);
    CHECK(WaitForSingleObject(event, 50) == WAIT_TIMEOUT);
    CHECK(sendto(tx, "event", 5, 0, (SOCKADDR *)&addr, sizeof(addr)) == 5);
    CHECK(WaitForSingleObject(event, 5000) == WAIT_OBJECT_0);
    RIORESULT r[4];
    CHECK(rio.RIODequeueCompletion(cq, r, 4) == 1);
    CHECK(r[0].BytesTransferred == 5 && r[0].RequestContext == 3 && r[0].SocketContext == 5);
    CHECK(memcmp(memory, "event", 5) == 0);
    SOCKADDR_INET *from = (SOCKADDR_INET *)names;
    CHECK(from->si_family == AF_INET && from->Ipv4.sin_port == peer.sin_port);

    // A send from registered memory, to an address in registered memory.
    memcpy(memory + 1024, "reply", 5);
    RIO_BUF sdata = {buf, 1024, 5};
    SOCKADDR_INET *to = (SOCKADDR_INET *)(names + sizeof(SOCKADDR_INET));
    ZeroMemory(to, sizeof(*to));
    to->Ipv4 = peer;
    RIO_BUF sto = {nbuf, sizeof(SOCKADDR_INET), sizeof(SOCKADDR_INET)};
    CHECK(rio.RIOSendEx(rq, &sdata, 1, NULL, &sto, NULL, NULL, 0, (PVOID)4));
    char back[16];
    CHECK(recv(tx, back, sizeof(back), 0) == 5 && memcmp(back, "reply", 5) == 0);
    DWORD t0 = GetTickCount();
    ULONG n = 0;
    while (n == 0 && GetTickCount() - t0 < 5000)
        n = rio.RIODequeueCompletion(cq, r, 4);
    CHECK(n == 1 && r[0].RequestContext == 4 && r[0].BytesTransferred == 5);

    closesocket(s);
    closesocket(tx);
    rio.RIOCloseCompletionQueue(cq);
    rio.RIODeregisterBuffer(buf);
    rio.RIODeregisterBuffer(nbuf);
    CloseHandle(event);
}

int main() {
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    CHECK(wsa.wVersion == MAKEWORD(2, 2));
    PortErrors();
    OverlappedUdp();
    TcpAcceptEx();
    RioErrors();
    RioEvent();
    // MSVC habits: %I64d in printf, and printf as a void expression.
    __int64 big = 5000000000LL;
    unsigned __int64 ubig = 18000000000ULL;
    g_failures == 0 ? printf("%I64d %I64u ok\n", big, ubig) : void();
    WSACleanup();
    if (g_failures) {
        printf("%d failures\n", g_failures);
        return 1;
    }
    return 0;
}
