/* The floor under fovea's single-caller RPC latency: a bare UDP round trip between two
 * processes on loopback, with receivers that sleep (blocking recv, or epoll_wait then recv)
 * or spin (non-blocking recv in a loop). See BENCHMARKS.md, "Idle spinning".
 *
 *   gcc -O2 -o /tmp/udp-pingpong scripts/udp-pingpong.c
 *   /tmp/udp-pingpong sleep; /tmp/udp-pingpong epoll; /tmp/udp-pingpong spin
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { ROUNDS = 20000 };
static int mode; /* 0 sleep, 1 epoll, 2 spin */

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void receive(int fd, int ep, char *buf, size_t len) {
    if (mode == 2) {
        while (recv(fd, buf, len, MSG_DONTWAIT) < 0) {}
        return;
    }
    if (mode == 1) {
        struct epoll_event e;
        epoll_wait(ep, &e, 1, -1);
    }
    recv(fd, buf, len, 0);
}

static int cmp(const void *x, const void *y) {
    double d = *(const double *)x - *(const double *)y;
    return d < 0 ? -1 : d > 0;
}

static int watch(int fd) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return ep;
}

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "sleep";
    mode = !strcmp(m, "epoll") ? 1 : !strcmp(m, "spin") ? 2 : 0;
    int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {0}, sb = {0};
    sa.sin_family = sb.sin_family = AF_INET;
    sa.sin_addr.s_addr = sb.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(a, (void *)&sa, sizeof sa) || bind(b, (void *)&sb, sizeof sb)) { perror("bind"); return 1; }
    socklen_t l = sizeof sa;
    getsockname(a, (void *)&sa, &l);
    l = sizeof sb;
    getsockname(b, (void *)&sb, &l);
    connect(a, (void *)&sb, sizeof sb);
    connect(b, (void *)&sa, sizeof sa);
    char buf[1500] = {0};
    pid_t child = fork();
    if (child == 0) {
        int ep = watch(b);
        for (int i = 0; i < ROUNDS; i++) {
            receive(b, ep, buf, sizeof buf);
            send(b, buf, 100, 0);
        }
        _exit(0);
    }
    int ep = watch(a);
    double *lat = malloc(ROUNDS * sizeof *lat);
    for (int i = 0; i < ROUNDS; i++) {
        double t = now_us();
        send(a, buf, 100, 0);
        receive(a, ep, buf, sizeof buf);
        lat[i] = now_us() - t;
    }
    waitpid(child, NULL, 0);
    qsort(lat, ROUNDS, sizeof *lat, cmp);
    printf("mode=%s rounds=%d rtt_p50_us=%.1f rtt_p99_us=%.1f\n", m, ROUNDS, lat[ROUNDS / 2], lat[ROUNDS * 99 / 100]);
    return 0;
}
