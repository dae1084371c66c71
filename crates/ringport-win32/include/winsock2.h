/* winsock2.h for ringport-win32: Winsock over Linux sockets. A SOCKET is the
 * Linux descriptor, and the sockaddr structures are Linux's (same layout as
 * Windows' for AF_INET; AF_INET6 has Linux's value). */
#ifndef RINGPORT_WIN32_WINSOCK2_H
#define RINGPORT_WIN32_WINSOCK2_H

#include "windows.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef UINT_PTR SOCKET;
typedef unsigned int GROUP;
typedef USHORT ADDRESS_FAMILY;
typedef struct sockaddr SOCKADDR, *PSOCKADDR, *LPSOCKADDR;
typedef struct sockaddr_in SOCKADDR_IN, *PSOCKADDR_IN, *LPSOCKADDR_IN;
typedef struct sockaddr_in6 SOCKADDR_IN6, *PSOCKADDR_IN6, *LPSOCKADDR_IN6;
typedef struct sockaddr_storage SOCKADDR_STORAGE, *PSOCKADDR_STORAGE;
typedef struct in_addr IN_ADDR, *PIN_ADDR;
typedef struct in6_addr IN6_ADDR, *PIN6_ADDR;
typedef struct addrinfo ADDRINFOA, *PADDRINFOA;
typedef union _SOCKADDR_INET {
    SOCKADDR_IN Ipv4;
    SOCKADDR_IN6 Ipv6;
    ADDRESS_FAMILY si_family;
} SOCKADDR_INET, *PSOCKADDR_INET;

typedef struct _GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} GUID, *LPGUID;

#define WSADESCRIPTION_LEN 256
#define WSASYS_STATUS_LEN 128
typedef struct WSAData {
    WORD wVersion;
    WORD wHighVersion;
    unsigned short iMaxSockets;
    unsigned short iMaxUdpDg;
    char *lpVendorInfo;
    char szDescription[WSADESCRIPTION_LEN + 1];
    char szSystemStatus[WSASYS_STATUS_LEN + 1];
} WSADATA, *LPWSADATA;

typedef struct _WSABUF {
    ULONG len;
    CHAR *buf;
} WSABUF, *LPWSABUF;

typedef OVERLAPPED WSAOVERLAPPED, *LPWSAOVERLAPPED;
typedef void (CALLBACK *LPWSAOVERLAPPED_COMPLETION_ROUTINE)(DWORD dwError, DWORD cbTransferred,
                                                           LPWSAOVERLAPPED lpOverlapped,
                                                           DWORD dwFlags);
typedef void *LPWSAPROTOCOL_INFOA, *LPWSAPROTOCOL_INFOW;
typedef HANDLE WSAEVENT;

#define MAKEWORD(a, b) ((WORD)(((BYTE)(a)) | (((WORD)((BYTE)(b))) << 8)))
#define LOBYTE(w) ((BYTE)((w) & 0xff))
#define HIBYTE(w) ((BYTE)(((w) >> 8) & 0xff))

#define INVALID_SOCKET ((SOCKET)(~0))
#define SOCKET_ERROR (-1)
#define WSA_INVALID_EVENT ((WSAEVENT)NULL)
#define SD_RECEIVE 0x00
#define SD_SEND 0x01
#define SD_BOTH 0x02

#define WSA_FLAG_OVERLAPPED 0x01
#define WSA_FLAG_NO_HANDLE_INHERIT 0x80
#define WSA_FLAG_REGISTERED_IO 0x100

#define IOC_VOID 0x20000000
#define IOC_OUT 0x40000000
#define IOC_IN 0x80000000
#define IOC_INOUT (IOC_IN | IOC_OUT)
#define IOC_WS2 0x08000000
#define _WSAIORW(x, y) (IOC_INOUT | (x) | (y))
#define SIO_GET_EXTENSION_FUNCTION_POINTER _WSAIORW(IOC_WS2, 6)
#define SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER _WSAIORW(IOC_WS2, 36)

#define WSA_IO_PENDING (ERROR_IO_PENDING)
#define WSA_IO_INCOMPLETE (ERROR_IO_INCOMPLETE)
#define WSA_OPERATION_ABORTED (ERROR_OPERATION_ABORTED)
#define WSA_INVALID_HANDLE (ERROR_INVALID_HANDLE)
#define WSA_INVALID_PARAMETER (ERROR_INVALID_PARAMETER)
#define WSAEINTR 10004L
#define WSAEBADF 10009L
#define WSAEACCES 10013L
#define WSAEFAULT 10014L
#define WSAEINVAL 10022L
#define WSAEMFILE 10024L
#define WSAEWOULDBLOCK 10035L
#define WSAEINPROGRESS 10036L
#define WSAEALREADY 10037L
#define WSAENOTSOCK 10038L
#define WSAEDESTADDRREQ 10039L
#define WSAEMSGSIZE 10040L
#define WSAEPROTOTYPE 10041L
#define WSAENOPROTOOPT 10042L
#define WSAEPROTONOSUPPORT 10043L
#define WSAEOPNOTSUPP 10045L
#define WSAEAFNOSUPPORT 10047L
#define WSAEADDRINUSE 10048L
#define WSAEADDRNOTAVAIL 10049L
#define WSAENETDOWN 10050L
#define WSAENETUNREACH 10051L
#define WSAENETRESET 10052L
#define WSAECONNABORTED 10053L
#define WSAECONNRESET 10054L
#define WSAENOBUFS 10055L
#define WSAEISCONN 10056L
#define WSAENOTCONN 10057L
#define WSAESHUTDOWN 10058L
#define WSAETIMEDOUT 10060L
#define WSAECONNREFUSED 10061L
#define WSAEHOSTUNREACH 10065L
#define WSANOTINITIALISED 10093L

int WSAAPI WSAStartup(WORD wVersionRequested, LPWSADATA lpWSAData);
int WSAAPI WSACleanup(void);
int WSAAPI WSAGetLastError(void);
void WSAAPI WSASetLastError(int iError);
SOCKET WSAAPI WSASocketA(int af, int type, int protocol, LPWSAPROTOCOL_INFOA lpProtocolInfo,
                         GROUP g, DWORD dwFlags);
SOCKET WSAAPI WSASocketW(int af, int type, int protocol, LPWSAPROTOCOL_INFOW lpProtocolInfo,
                         GROUP g, DWORD dwFlags);
#ifdef UNICODE
#define WSASocket WSASocketW
#else
#define WSASocket WSASocketA
#endif
int WSAAPI closesocket(SOCKET s);
int WSAAPI WSARecv(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount,
                   LPDWORD lpNumberOfBytesRecvd, LPDWORD lpFlags, LPWSAOVERLAPPED lpOverlapped,
                   LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSAAPI WSASend(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount, LPDWORD lpNumberOfBytesSent,
                   DWORD dwFlags, LPWSAOVERLAPPED lpOverlapped,
                   LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSAAPI WSARecvFrom(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount,
                       LPDWORD lpNumberOfBytesRecvd, LPDWORD lpFlags, struct sockaddr *lpFrom,
                       int *lpFromlen, LPWSAOVERLAPPED lpOverlapped,
                       LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSAAPI WSASendTo(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount,
                     LPDWORD lpNumberOfBytesSent, DWORD dwFlags, const struct sockaddr *lpTo,
                     int iTolen, LPWSAOVERLAPPED lpOverlapped,
                     LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSAAPI WSAIoctl(SOCKET s, DWORD dwIoControlCode, LPVOID lpvInBuffer, DWORD cbInBuffer,
                    LPVOID lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned,
                    LPWSAOVERLAPPED lpOverlapped,
                    LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
WSAEVENT WSAAPI WSACreateEvent(void);
BOOL WSAAPI WSASetEvent(WSAEVENT hEvent);
BOOL WSAAPI WSAResetEvent(WSAEVENT hEvent);
BOOL WSAAPI WSACloseEvent(WSAEVENT hEvent);

/* bind, listen and connect as Winsock has them: SOCKET_ERROR with
 * WSAGetLastError() set. */
int ringport_win32_bind(SOCKET s, const struct sockaddr *name, int namelen);
int ringport_win32_listen(SOCKET s, int backlog);
int ringport_win32_connect(SOCKET s, const struct sockaddr *name, int namelen);
/* The Winsock code for a Linux errno. */
int ringport_win32_wsa_from_errno(int e);

#ifdef __cplusplus
}
#endif

static inline int ringport_win32_errno_fail(void) {
    int e = errno;
    WSASetLastError(ringport_win32_wsa_from_errno(e));
    return SOCKET_ERROR;
}

#ifdef __cplusplus
/* Overloads on SOCKET: a call with a SOCKET picks these over the libc
 * functions (which take an int), so Winsock code keeps its int lengths and
 * gets WSAGetLastError(). (Data lengths are size_t here so that a
 * sizeof(buffer) argument does not make the call ambiguous.) */
static inline int bind(SOCKET s, const struct sockaddr *a, int l) { return ringport_win32_bind(s, a, l); }
static inline int listen(SOCKET s, int backlog) { return ringport_win32_listen(s, backlog); }
static inline int connect(SOCKET s, const struct sockaddr *a, int l) { return ringport_win32_connect(s, a, l); }
static inline SOCKET accept(SOCKET s, struct sockaddr *a, int *l) {
    socklen_t n = l ? (socklen_t)*l : 0;
    int r = ::accept((int)s, a, l ? &n : (socklen_t *)NULL);
    if (l) *l = (int)n;
    if (r < 0) { ringport_win32_errno_fail(); return INVALID_SOCKET; }
    return (SOCKET)r;
}
static inline int getsockname(SOCKET s, struct sockaddr *a, int *l) {
    socklen_t n = (socklen_t)*l;
    int r = ::getsockname((int)s, a, &n);
    *l = (int)n;
    return r < 0 ? ringport_win32_errno_fail() : 0;
}
static inline int getpeername(SOCKET s, struct sockaddr *a, int *l) {
    socklen_t n = (socklen_t)*l;
    int r = ::getpeername((int)s, a, &n);
    *l = (int)n;
    return r < 0 ? ringport_win32_errno_fail() : 0;
}
static inline int setsockopt(SOCKET s, int level, int name, const char *v, int l) {
    if (level == 0xffff) level = SOL_SOCKET;
    if (level == SOL_SOCKET && (name == 0x700B || name == 0x7010)) return 0; /* SO_UPDATE_*_CONTEXT */
    int r = ::setsockopt((int)s, level, name, (const void *)v, (socklen_t)l);
    return r < 0 ? ringport_win32_errno_fail() : 0;
}
static inline int getsockopt(SOCKET s, int level, int name, char *v, int *l) {
    socklen_t n = (socklen_t)*l;
    int r = ::getsockopt((int)s, level, name, (void *)v, &n);
    *l = (int)n;
    return r < 0 ? ringport_win32_errno_fail() : 0;
}
static inline int recv(SOCKET s, char *b, size_t l, int f) {
    ssize_t r = ::recv((int)s, (void *)b, (size_t)l, f);
    return r < 0 ? ringport_win32_errno_fail() : (int)r;
}
static inline int send(SOCKET s, const char *b, size_t l, int f) {
    ssize_t r = ::send((int)s, (const void *)b, (size_t)l, f | MSG_NOSIGNAL);
    return r < 0 ? ringport_win32_errno_fail() : (int)r;
}
static inline int recvfrom(SOCKET s, char *b, size_t l, int f, struct sockaddr *a, int *al) {
    socklen_t n = al ? (socklen_t)*al : 0;
    ssize_t r = ::recvfrom((int)s, (void *)b, (size_t)l, f, a, al ? &n : (socklen_t *)NULL);
    if (al) *al = (int)n;
    return r < 0 ? ringport_win32_errno_fail() : (int)r;
}
static inline int sendto(SOCKET s, const char *b, size_t l, int f, const struct sockaddr *a, int al) {
    ssize_t r = ::sendto((int)s, (const void *)b, (size_t)l, f | MSG_NOSIGNAL, a, (socklen_t)al);
    return r < 0 ? ringport_win32_errno_fail() : (int)r;
}
static inline int shutdown(SOCKET s, int how) {
    return ::shutdown((int)s, how) < 0 ? ringport_win32_errno_fail() : 0;
}
#else
#define bind(s, a, l) ringport_win32_bind((s), (a), (l))
#define listen(s, b) ringport_win32_listen((s), (b))
#define connect(s, a, l) ringport_win32_connect((s), (a), (l))
#endif

#endif /* RINGPORT_WIN32_WINSOCK2_H */
