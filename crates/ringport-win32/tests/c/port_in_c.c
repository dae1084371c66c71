/* The headers in plain C (gcc): a port, worker threads, events and the
 * concurrency limit, checked through the Win32 API. */
#include <winsock2.h>
#include <mswsock.h>
#include <windows.h>

static HANDLE g_port;
static volatile LONG g_active = 0, g_most = 0, g_done = 0;
static HANDLE g_event;

static DWORD WINAPI Worker(LPVOID param) {
    (void)param;
    for (;;) {
        DWORD n;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        if (!GetQueuedCompletionStatus(g_port, &n, &key, &ov, INFINITE))
            return 1;
        if (key == 0)
            return 0;
        LONG now = InterlockedIncrement(&g_active);
        LONG most = g_most;
        while (now > most && InterlockedCompareExchange(&g_most, now, most) != most)
            most = g_most;
        /* Busy work, not a blocking call: the thread keeps its slot. */
        volatile unsigned long long x = 0;
        for (int i = 0; i < 2000000; i++)
            x += (unsigned long long)i;
        InterlockedDecrement(&g_active);
        if (InterlockedIncrement(&g_done) == 40)
            SetEvent(g_event);
    }
}

/* A thread that sleeps while active gives its slot up: on a port of
 * concurrency 1, a second thread runs while the first sleeps. */
static HANDLE g_sleep_port;
static volatile LONG g_sleeping = 0, g_overlap = 0;

static DWORD WINAPI Sleeper(LPVOID param) {
    (void)param;
    for (;;) {
        DWORD n;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        if (!GetQueuedCompletionStatus(g_sleep_port, &n, &key, &ov, INFINITE))
            return 1;
        if (key == 0)
            return 0;
        if (InterlockedIncrement(&g_sleeping) == 2)
            InterlockedExchange(&g_overlap, 1);
        Sleep(300);
        InterlockedDecrement(&g_sleeping);
    }
}

static int SleepFreesSlot(void) {
    g_sleep_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    HANDLE t[2];
    for (int i = 0; i < 2; i++)
        t[i] = CreateThread(NULL, 0, Sleeper, NULL, 0, NULL);
    Sleep(50);
    PostQueuedCompletionStatus(g_sleep_port, 0, 1, NULL);
    PostQueuedCompletionStatus(g_sleep_port, 0, 1, NULL);
    Sleep(100);
    PostQueuedCompletionStatus(g_sleep_port, 0, 0, NULL);
    PostQueuedCompletionStatus(g_sleep_port, 0, 0, NULL);
    DWORD w = WaitForMultipleObjects(2, t, TRUE, 10000);
    CloseHandle(t[0]);
    CloseHandle(t[1]);
    CloseHandle(g_sleep_port);
    if (w != WAIT_OBJECT_0 || !g_overlap) {
        printf("FAILED: a sleeping thread kept its slot (overlap %ld)\n", (long)g_overlap);
        return 1;
    }
    return 0;
}

int main(void) {
    if (SleepFreesSlot())
        return 1;
    /* Concurrency 1: however many threads wait, one runs at a time. */
    g_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    g_event = CreateEvent(NULL, TRUE, FALSE, NULL);
    HANDLE threads[4];
    for (int i = 0; i < 4; i++)
        threads[i] = CreateThread(NULL, 0, Worker, NULL, 0, NULL);
    for (int i = 0; i < 40; i++)
        PostQueuedCompletionStatus(g_port, 0, 1, NULL);
    if (WaitForSingleObject(g_event, 60000) != WAIT_OBJECT_0) {
        printf("FAILED: work did not finish\n");
        return 1;
    }
    for (int i = 0; i < 4; i++)
        PostQueuedCompletionStatus(g_port, 0, 0, NULL);
    if (WaitForMultipleObjects(4, threads, TRUE, 10000) != WAIT_OBJECT_0) {
        printf("FAILED: workers did not stop\n");
        return 1;
    }
    for (int i = 0; i < 4; i++)
        CloseHandle(threads[i]);
    CloseHandle(g_event);
    CloseHandle(g_port);
    __int64 done = g_done;
    g_most == 1 ? printf("C: %I64d items, at most %ld thread active\n", done, (long)g_most)
                : (void)0;
    if (g_most != 1) {
        printf("FAILED: %ld threads were active at once on a port of concurrency 1\n", (long)g_most);
        return 1;
    }
    return 0;
}
