/*
 * LD_PRELOAD shim for test peers that can only listen on every interface.
 *
 * Orthanc 1.10 and DCMTK 3.6.7 (dcmqrscp, storescp) bind 0.0.0.0 with no option to pick an
 * address. Preloaded, this library turns a bind on the IPv4/IPv6 wildcard address with a
 * non-zero port (a listening socket) into a bind on loopback, so test peers are reachable from
 * this host only. Client sockets (port 0) are left untouched.
 *
 *   cc -shared -fPIC -O2 -o loopback_bind.so loopback_bind.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

static bind_function next_bind(void)
{
    static bind_function found;
    if (!found)
        found = (bind_function)dlsym(RTLD_NEXT, "bind");
    return found;
}

int bind(int fd, const struct sockaddr *address, socklen_t length)
{
    if (address && address->sa_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in v4;
        memcpy(&v4, address, sizeof v4);
        if (v4.sin_port != 0 && v4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return next_bind()(fd, (const struct sockaddr *)&v4, sizeof v4);
        }
    }
    if (address && address->sa_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 v6;
        memcpy(&v6, address, sizeof v6);
        if (v6.sin6_port != 0 && IN6_IS_ADDR_UNSPECIFIED(&v6.sin6_addr)) {
            v6.sin6_addr = in6addr_loopback;
            return next_bind()(fd, (const struct sockaddr *)&v6, sizeof v6);
        }
    }
    return next_bind()(fd, address, length);
}
