// The classic completion-port demo, written for Windows: sum 0..999,999 in 100
// work items on a pool of 2 x CPU worker threads, at most CPU of them running
// at once (the port's concurrency limit), one stop key per worker, and a table
// of each thread's load at the end.
//
// Builds unchanged with MSVC on Windows, and on Linux over ringport:
//   g++ -O2 -I crates/ringport-win32/include crates/ringport-win32/examples/iocp_sum.cpp
//       -L target/release -l:libringport_win32.a -lpthread -ldl -o iocp_sum
#include <windows.h>

#define ITEMS 1000000
#define CHUNK 10000
#define KEY_WORK 1
#define KEY_STOP 2
#define MAX_THREADS 256

struct WorkItem {
    OVERLAPPED ov; // first member: the OVERLAPPED* the port hands back is the item
    __int64 start;
    __int64 count;
};

static HANDLE g_port;
static volatile LONG64 g_total = 0;
static volatile LONG g_items_done = 0;
static DWORD g_thread_ids[MAX_THREADS];
static LONG g_load[MAX_THREADS];
static BOOL g_verbose = FALSE;

static DWORD WINAPI Worker(LPVOID param) {
    int index = (int)(INT_PTR)param;
    g_thread_ids[index] = GetCurrentThreadId();
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED ov = NULL;
        if (!GetQueuedCompletionStatus(g_port, &bytes, &key, &ov, INFINITE)) {
            printf("thread %lu: GetQueuedCompletionStatus failed: %lu\n",
                   (unsigned long)GetCurrentThreadId(), (unsigned long)GetLastError());
            return 1;
        }
        if (key == KEY_STOP)
            break;
        WorkItem *item = (WorkItem *)ov;
        __int64 sum = 0;
        for (__int64 i = item->start; i < item->start + item->count; i++)
            sum += i;
        InterlockedExchangeAdd64(&g_total, sum);
        InterlockedIncrement(&g_items_done);
        g_load[index]++;
        g_verbose ? printf("thread %lu summed %I64d..%I64d = %I64d\n",
                           (unsigned long)GetCurrentThreadId(), item->start,
                           item->start + item->count - 1, sum)
                  : void();
    }
    return 0;
}

int main(int argc, char **argv) {
    g_verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
    SYSTEM_INFO si;
    ZeroMemory(&si, sizeof(si));
    GetSystemInfo(&si);
    DWORD threads = 2 * si.dwNumberOfProcessors;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;

    // Concurrency 0: as many running threads as processors.
    g_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (g_port == NULL) {
        printf("CreateIoCompletionPort failed: %lu\n", (unsigned long)GetLastError());
        return 1;
    }

    HANDLE handles[MAX_THREADS];
    for (DWORD i = 0; i < threads; i++) {
        DWORD tid;
        handles[i] = CreateThread(NULL, 0, Worker, (LPVOID)(INT_PTR)i, 0, &tid);
        if (handles[i] == NULL) {
            printf("CreateThread failed: %lu\n", (unsigned long)GetLastError());
            return 1;
        }
    }

    static WorkItem items[ITEMS / CHUNK];
    for (int i = 0; i < ITEMS / CHUNK; i++) {
        ZeroMemory(&items[i].ov, sizeof(OVERLAPPED));
        items[i].start = (__int64)i * CHUNK;
        items[i].count = CHUNK;
        if (!PostQueuedCompletionStatus(g_port, 0, KEY_WORK, &items[i].ov)) {
            printf("PostQueuedCompletionStatus failed: %lu\n", (unsigned long)GetLastError());
            return 1;
        }
    }
    // One stop key per worker: each takes one and leaves.
    for (DWORD i = 0; i < threads; i++)
        PostQueuedCompletionStatus(g_port, 0, KEY_STOP, NULL);

    // WaitForMultipleObjects takes at most 64 handles at a time.
    for (DWORD i = 0; i < threads; i += MAXIMUM_WAIT_OBJECTS) {
        DWORD n = threads - i < MAXIMUM_WAIT_OBJECTS ? threads - i : MAXIMUM_WAIT_OBJECTS;
        if (WaitForMultipleObjects(n, &handles[i], TRUE, 60000) != WAIT_OBJECT_0) {
            printf("workers did not finish: %lu\n", (unsigned long)GetLastError());
            return 1;
        }
    }

    const __int64 expected = (__int64)ITEMS * (ITEMS - 1) / 2;
    printf("the final results are [%I64d]\n", g_total);
    printf("%ld work items on %lu threads (%lu processors)\n", (long)g_items_done,
           (unsigned long)threads, (unsigned long)si.dwNumberOfProcessors);
    printf("thread      items\n");
    LONG counted = 0;
    for (DWORD i = 0; i < threads; i++) {
        printf("%-10lu %6ld\n", (unsigned long)g_thread_ids[i], (long)g_load[i]);
        counted += g_load[i];
        CloseHandle(handles[i]);
    }
    CloseHandle(g_port);
    if (g_total != expected || counted != ITEMS / CHUNK) {
        printf("WRONG: expected %I64d in %d items\n", expected, ITEMS / CHUNK);
        return 1;
    }
    return 0;
}
