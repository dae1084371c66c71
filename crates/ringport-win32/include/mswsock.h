/* mswsock.h for ringport-win32: the Microsoft Winsock extensions (AcceptEx,
 * ConnectEx, GetAcceptExSockaddrs) and Registered I/O, handed out by
 * WSAIoctl as on Windows. */
#ifndef RINGPORT_WIN32_MSWSOCK_H
#define RINGPORT_WIN32_MSWSOCK_H

#include "winsock2.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SO_UPDATE_ACCEPT_CONTEXT 0x700B
#define SO_UPDATE_CONNECT_CONTEXT 0x7010

#define WSAID_ACCEPTEX \
    {0xb5367df1, 0xcbac, 0x11cf, {0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92}}
#define WSAID_GETACCEPTEXSOCKADDRS \
    {0xb5367df2, 0xcbac, 0x11cf, {0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92}}
#define WSAID_CONNECTEX \
    {0x25a207b9, 0xddf3, 0x4660, {0x8e, 0xe9, 0x76, 0xe5, 0x8c, 0x74, 0x06, 0x3e}}
#define WSAID_MULTIPLE_RIO \
    {0x8509e081, 0x96dd, 0x4005, {0xb1, 0x65, 0x9e, 0x2e, 0xe8, 0xc7, 0x9e, 0x3f}}

typedef BOOL (PASCAL *LPFN_ACCEPTEX)(SOCKET sListenSocket, SOCKET sAcceptSocket,
                                     PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
                                     DWORD dwLocalAddressLength, DWORD dwRemoteAddressLength,
                                     LPDWORD lpdwBytesReceived, LPOVERLAPPED lpOverlapped);
typedef void (PASCAL *LPFN_GETACCEPTEXSOCKADDRS)(PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
                                                 DWORD dwLocalAddressLength,
                                                 DWORD dwRemoteAddressLength,
                                                 struct sockaddr **LocalSockaddr,
                                                 LPINT LocalSockaddrLength,
                                                 struct sockaddr **RemoteSockaddr,
                                                 LPINT RemoteSockaddrLength);
typedef BOOL (PASCAL *LPFN_CONNECTEX)(SOCKET s, const struct sockaddr *name, int namelen,
                                      PVOID lpSendBuffer, DWORD dwSendDataLength,
                                      LPDWORD lpdwBytesSent, LPOVERLAPPED lpOverlapped);

BOOL PASCAL AcceptEx(SOCKET sListenSocket, SOCKET sAcceptSocket, PVOID lpOutputBuffer,
                     DWORD dwReceiveDataLength, DWORD dwLocalAddressLength,
                     DWORD dwRemoteAddressLength, LPDWORD lpdwBytesReceived,
                     LPOVERLAPPED lpOverlapped);
void PASCAL GetAcceptExSockaddrs(PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
                                 DWORD dwLocalAddressLength, DWORD dwRemoteAddressLength,
                                 struct sockaddr **LocalSockaddr, LPINT LocalSockaddrLength,
                                 struct sockaddr **RemoteSockaddr, LPINT RemoteSockaddrLength);

/* Registered I/O */
typedef struct RIO_BUFFERID_t *RIO_BUFFERID, **PRIO_BUFFERID;
typedef struct RIO_CQ_t *RIO_CQ, **PRIO_CQ;
typedef struct RIO_RQ_t *RIO_RQ, **PRIO_RQ;

#define RIO_INVALID_BUFFERID ((RIO_BUFFERID)(ULONG_PTR)0xFFFFFFFF)
#define RIO_INVALID_CQ ((RIO_CQ)0)
#define RIO_INVALID_RQ ((RIO_RQ)0)
#define RIO_CORRUPT_CQ 0xFFFFFFFF
#define RIO_MAX_CQ_SIZE 0x8000000

#define RIO_MSG_DONT_NOTIFY 0x00000001
#define RIO_MSG_DEFER 0x00000002
#define RIO_MSG_WAITALL 0x00000004
#define RIO_MSG_COMMIT_ONLY 0x00000008

typedef struct _RIORESULT {
    LONG Status;
    ULONG BytesTransferred;
    ULONGLONG SocketContext;
    ULONGLONG RequestContext;
} RIORESULT, *PRIORESULT;

typedef struct _RIO_BUF {
    RIO_BUFFERID BufferId;
    ULONG Offset;
    ULONG Length;
} RIO_BUF, *PRIO_BUF;

typedef enum _RIO_NOTIFICATION_COMPLETION_TYPE {
    RIO_EVENT_COMPLETION = 1,
    RIO_IOCP_COMPLETION = 2,
} RIO_NOTIFICATION_COMPLETION_TYPE, *PRIO_NOTIFICATION_COMPLETION_TYPE;

typedef struct _RIO_NOTIFICATION_COMPLETION {
    RIO_NOTIFICATION_COMPLETION_TYPE Type;
    union {
        struct {
            HANDLE EventHandle;
            BOOL NotifyReset;
        } Event;
        struct {
            HANDLE IocpHandle;
            PVOID CompletionKey;
            PVOID Overlapped;
        } Iocp;
    };
} RIO_NOTIFICATION_COMPLETION, *PRIO_NOTIFICATION_COMPLETION;

typedef BOOL (PASCAL *LPFN_RIORECEIVE)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
                                       DWORD Flags, PVOID RequestContext);
typedef int (PASCAL *LPFN_RIORECEIVEEX)(RIO_RQ SocketQueue, PRIO_BUF pData,
                                        ULONG DataBufferCount, PRIO_BUF pLocalAddress,
                                        PRIO_BUF pRemoteAddress, PRIO_BUF pControlContext,
                                        PRIO_BUF pFlags, DWORD Flags, PVOID RequestContext);
typedef BOOL (PASCAL *LPFN_RIOSEND)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
                                    DWORD Flags, PVOID RequestContext);
typedef BOOL (PASCAL *LPFN_RIOSENDEX)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
                                      PRIO_BUF pLocalAddress, PRIO_BUF pRemoteAddress,
                                      PRIO_BUF pControlContext, PRIO_BUF pFlags, DWORD Flags,
                                      PVOID RequestContext);
typedef void (PASCAL *LPFN_RIOCLOSECOMPLETIONQUEUE)(RIO_CQ CQ);
typedef RIO_CQ (PASCAL *LPFN_RIOCREATECOMPLETIONQUEUE)(
    DWORD QueueSize, PRIO_NOTIFICATION_COMPLETION NotificationCompletion);
typedef RIO_RQ (PASCAL *LPFN_RIOCREATEREQUESTQUEUE)(SOCKET Socket, ULONG MaxOutstandingReceive,
                                                    ULONG MaxReceiveDataBuffers,
                                                    ULONG MaxOutstandingSend,
                                                    ULONG MaxSendDataBuffers, RIO_CQ ReceiveCQ,
                                                    RIO_CQ SendCQ, PVOID SocketContext);
typedef ULONG (PASCAL *LPFN_RIODEQUEUECOMPLETION)(RIO_CQ CQ, PRIORESULT Array, ULONG ArraySize);
typedef void (PASCAL *LPFN_RIODEREGISTERBUFFER)(RIO_BUFFERID BufferId);
typedef int (PASCAL *LPFN_RIONOTIFY)(RIO_CQ CQ);
typedef RIO_BUFFERID (PASCAL *LPFN_RIOREGISTERBUFFER)(PCHAR DataBuffer, DWORD DataLength);
typedef BOOL (PASCAL *LPFN_RIORESIZECOMPLETIONQUEUE)(RIO_CQ CQ, DWORD QueueSize);
typedef BOOL (PASCAL *LPFN_RIORESIZEREQUESTQUEUE)(RIO_RQ RQ, DWORD MaxOutstandingReceive,
                                                  DWORD MaxOutstandingSend);

typedef struct _RIO_EXTENSION_FUNCTION_TABLE {
    DWORD cbSize;
    LPFN_RIORECEIVE RIOReceive;
    LPFN_RIORECEIVEEX RIOReceiveEx;
    LPFN_RIOSEND RIOSend;
    LPFN_RIOSENDEX RIOSendEx;
    LPFN_RIOCLOSECOMPLETIONQUEUE RIOCloseCompletionQueue;
    LPFN_RIOCREATECOMPLETIONQUEUE RIOCreateCompletionQueue;
    LPFN_RIOCREATEREQUESTQUEUE RIOCreateRequestQueue;
    LPFN_RIODEQUEUECOMPLETION RIODequeueCompletion;
    LPFN_RIODEREGISTERBUFFER RIODeregisterBuffer;
    LPFN_RIONOTIFY RIONotify;
    LPFN_RIOREGISTERBUFFER RIORegisterBuffer;
    LPFN_RIORESIZECOMPLETIONQUEUE RIOResizeCompletionQueue;
    LPFN_RIORESIZEREQUESTQUEUE RIOResizeRequestQueue;
} RIO_EXTENSION_FUNCTION_TABLE, *PRIO_EXTENSION_FUNCTION_TABLE;

#ifdef __cplusplus
}
#endif

#endif /* RINGPORT_WIN32_MSWSOCK_H */
