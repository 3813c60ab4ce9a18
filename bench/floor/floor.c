/*
 * floor: the least a server can do for the benchmark's SSE fan-out.
 *
 * One process, one thread, level-triggered epoll.  It speaks just enough of
 * sseserver's protocol for bench/run.py (--server floor) and sseload:
 *
 *   floor --port P --control C        (0: the kernel picks; 127.0.0.1 only)
 *
 * SSE port: "GET /sse/<channel>[?query] ..." gets byte for byte the response
 * head and opening chunk sseserver sends for an HTTP/1.1 subscription, then one
 * HTTP/1.1 chunk per event.  Anything the client sends later is read and
 * discarded; EOF or an error closes and unsubscribes it.
 *
 * Control port: lines "channel=payload" or "*=payload" (LF, one CR dropped,
 * spaces and tabs around the target and the payload stripped as sseserver
 * does).  Each event is encoded once, with an sseserver-style id
 * "<ms since epoch>-<sequence>", into the chunk sseserver would write, then sent
 * with one send() per subscriber.  A send that would block or is partial closes
 * that subscriber; their number is printed at exit.  Lines without "=" (the
 * commands of sseserver's control port) are ignored.
 *
 * What it leaves out on purpose: no flow control, no replay, no heartbeats,
 * no HTTP/1.0, no percent-decoding, no validation.  It is a floor to compare
 * sseserver's CPU per delivery with, not a product.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MAX 8192          /* cap on an HTTP request head */
#define LINE_MAX_BYTES 65536      /* sseserver's MAX_LINE_BYTES */
#define CONTROL_BUF (2 * LINE_MAX_BYTES + 2)
#define NBUCKETS 4096             /* channel hash table */
#define MAX_EVENTS 1024

enum kind { FREE, SSE_LISTENER, CONTROL_LISTENER, REQUEST, SUBSCRIBER, CONTROL };

struct channel {
    struct channel *next;         /* hash chain */
    int *subs, n, cap;
    size_t len;
    char name[];
};

struct conn {
    uint8_t kind;
    uint8_t skipping;             /* control: dropping an over-long line */
    int pos;                      /* subscriber: index in its channel's subs */
    struct channel *chan;         /* subscriber */
    char *buf;                    /* request or control bytes kept between reads */
    size_t len;
};

static struct conn *conns;
static int nconns;                /* size of conns: the fd limit */
static struct channel *buckets[NBUCKETS];
static struct channel **channels; /* every channel, for "*" */
static int nchannels, capchannels;
static int ep;
static volatile sig_atomic_t stop_signal;
static unsigned long long slow_closed;

static char rbuf[256 * 1024];     /* shared read buffer */
static char wire[8 * CONTROL_BUF + 64]; /* one encoded event ("\r" grows 7x) */

static long long id_millis;
static unsigned long long id_sequence = (unsigned long long)-1;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* -- channels -------------------------------------------------------------------- */

static uint32_t hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static struct channel *find_channel(const char *name, size_t len, int create)
{
    struct channel **b = &buckets[hash(name, len) % NBUCKETS], *c;
    for (c = *b; c; c = c->next)
        if (c->len == len && memcmp(c->name, name, len) == 0)
            return c;
    if (!create)
        return NULL;
    c = calloc(1, sizeof *c + len + 1);
    if (!c)
        die("calloc");
    memcpy(c->name, name, len);
    c->len = len;
    c->next = *b;
    *b = c;
    if (nchannels == capchannels) {
        capchannels = capchannels ? 2 * capchannels : 64;
        channels = realloc(channels, capchannels * sizeof *channels);
        if (!channels)
            die("realloc");
    }
    channels[nchannels++] = c;
    return c;
}

static void subscribe(int fd, struct channel *c)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->subs = realloc(c->subs, c->cap * sizeof *c->subs);
        if (!c->subs)
            die("realloc");
    }
    conns[fd].chan = c;
    conns[fd].pos = c->n;
    c->subs[c->n++] = fd;
}

static void unsubscribe(int fd)
{
    struct channel *c = conns[fd].chan;
    int pos = conns[fd].pos, last = c->subs[--c->n];
    c->subs[pos] = last; /* swap-remove */
    conns[last].pos = pos;
}

/* -- connections ----------------------------------------------------------------- */

static void close_conn(int fd)
{
    struct conn *k = &conns[fd];
    if (k->kind == SUBSCRIBER)
        unsubscribe(fd);
    free(k->buf);
    memset(k, 0, sizeof *k);
    close(fd); /* also leaves the epoll set */
}

static void watch(int fd, enum kind kind)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    conns[fd].kind = kind;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
}

static int listen_on(int port, enum kind kind, const char *label)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    socklen_t alen = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    if (listen(fd, 1024) < 0)
        die("listen");
    if (getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        die("getsockname");
    printf("%s listening on 127.0.0.1:%d\n", label, ntohs(a.sin_port));
    watch(fd, kind);
    return fd;
}

static void accept_all(int lfd, enum kind kind)
{
    for (;;) {
        int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or out of fds: level-triggered, try again later */
        if (fd >= nconns) {
            close(fd);
            continue;
        }
        if (kind == REQUEST)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        watch(fd, kind);
    }
}

/* -- SSE requests ---------------------------------------------------------------- */

static const char *http_date(void)
{
    static char text[64];
    static time_t cached = -1;
    time_t now = time(NULL);
    if (now != cached) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(text, sizeof text, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached = now;
    }
    return text;
}

/* Send a whole small response or give up on the connection; 0 when sent. */
static int send_all_or_close(int fd, const char *p, size_t n)
{
    if (send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n) {
        close_conn(fd);
        return -1;
    }
    return 0;
}

static void answer(int fd, char *req, size_t len)
{
    static const char not_found[] =
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    char head[512];
    char *end = memchr(req, '\r', len), *path, *stop;
    if (!end || len < 9 || memcmp(req, "GET /sse/", 9) != 0)
        goto reject;
    path = req + 9;
    for (stop = path; stop < end && *stop != ' ' && *stop != '?'; stop++)
        ;
    if (stop == path)
        goto reject;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\n"
                     "Server: sseserver/0.1.0\r\n"
                     "Date: %s\r\n"
                     "Access-Control-Allow-Origin: *\r\n"
                     "Content-Type: text/event-stream; charset=utf-8\r\n"
                     "Cache-Control: no-cache\r\n"
                     "X-Accel-Buffering: no\r\n"
                     "Connection: keep-alive\r\n"
                     "Transfer-Encoding: chunked\r\n"
                     "\r\n"
                     "5\r\n:ok\n\n\r\n",
                     http_date());
    struct channel *c = find_channel(path, stop - path, 1);
    free(conns[fd].buf);
    conns[fd].buf = NULL;
    conns[fd].len = 0;
    if (send_all_or_close(fd, head, n) == 0) {
        conns[fd].kind = SUBSCRIBER;
        subscribe(fd, c);
    }
    return;
reject:
    send_all_or_close(fd, not_found, sizeof not_found - 1);
    if (conns[fd].kind != FREE)
        close_conn(fd);
}

static void on_request(int fd)
{
    struct conn *k = &conns[fd];
    size_t room = REQUEST_MAX - k->len;
    char *into = k->buf ? k->buf + k->len : rbuf;
    ssize_t n = recv(fd, into, room, 0);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            close_conn(fd);
        return;
    }
    char *req = k->buf ? k->buf : rbuf;
    size_t len = k->len + n;
    if (memmem(req, len, "\r\n\r\n", 4)) {
        answer(fd, req, len);
    } else if (len >= REQUEST_MAX) {
        close_conn(fd);
    } else if (!k->buf) { /* the head spans reads: keep what came */
        if (!(k->buf = malloc(REQUEST_MAX)))
            die("malloc");
        memcpy(k->buf, rbuf, len);
        k->len = len;
    } else {
        k->len = len;
    }
}

static void on_subscriber(int fd)
{
    ssize_t n = recv(fd, rbuf, sizeof rbuf, 0); /* discarded */
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        close_conn(fd);
}

/* -- publishing ------------------------------------------------------------------ */

static void deliver(struct channel *c, const char *p, size_t n)
{
    for (int i = 0; i < c->n;) {
        int fd = c->subs[i];
        if (send(fd, p, n, MSG_NOSIGNAL) == (ssize_t)n) {
            i++;
        } else { /* would block, partial or failed: drop it (swap-remove) */
            slow_closed++;
            close_conn(fd); /* moves the last subscriber to i */
        }
    }
}

static int blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The next event id, as sseserver's IdGenerator makes them. */
static int next_id(char *out)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (ms > id_millis) {
        id_millis = ms;
        id_sequence = 0;
    } else {
        id_sequence++;
    }
    return sprintf(out, "%lld-%llu", id_millis, id_sequence);
}

static void publish_line(char *s, size_t n)
{
    char *eq, *t0, *t1, *d0, *d1, *w;
    if (n && s[n - 1] == '\r')
        n--;
    while (n && blank(*s))
        s++, n--;
    while (n && blank(s[n - 1]))
        n--;
    if (!n || !(eq = memchr(s, '=', n)))
        return; /* empty, or a command: not handled here */
    t0 = s, t1 = eq;
    while (t0 < t1 && blank(*t0))
        t0++;
    while (t1 > t0 && blank(t1[-1]))
        t1--;
    d0 = eq + 1, d1 = s + n;
    while (d0 < d1 && blank(*d0))
        d0++;

    /* Encode once: chunk size, "id: ...\n", a "data: " line per CR-separated
     * piece, blank line, chunk end.  The size goes in front when known. */
    char *body = wire + 16;
    w = body;
    w += sprintf(w, "id: ");
    w += next_id(w);
    *w++ = '\n';
    memcpy(w, "data: ", 6), w += 6;
    for (char *p = d0; p < d1; p++) {
        if (*p == '\r') {
            memcpy(w, "\ndata: ", 7), w += 7;
        } else {
            *w++ = *p;
        }
    }
    *w++ = '\n', *w++ = '\n';
    size_t blen = w - body;
    *w++ = '\r', *w++ = '\n';
    char size[16];
    int slen = sprintf(size, "%zx\r\n", blen);
    char *start = body - slen;
    memcpy(start, size, slen);
    size_t total = w - start;

    if (t1 - t0 == 1 && *t0 == '*') {
        for (int i = 0; i < nchannels; i++)
            deliver(channels[i], start, total);
    } else if (t1 > t0) {
        struct channel *c = find_channel(t0, t1 - t0, 0);
        if (c)
            deliver(c, start, total);
    }
}

static void on_control(int fd)
{
    struct conn *k = &conns[fd];
    if (!k->buf && !(k->buf = malloc(CONTROL_BUF)))
        die("malloc");
    ssize_t n = recv(fd, k->buf + k->len, CONTROL_BUF - k->len, 0);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            if (k->len && !k->skipping) /* an unterminated last line counts */
                publish_line(k->buf, k->len);
            close_conn(fd);
        }
        return;
    }
    char *p = k->buf, *end = k->buf + k->len + n, *nl;
    while ((nl = memchr(p, '\n', end - p))) {
        if (k->skipping)
            k->skipping = 0;
        else if (nl - p <= LINE_MAX_BYTES + 1)
            publish_line(p, nl - p);
        p = nl + 1;
    }
    k->len = end - p;
    if (k->len > LINE_MAX_BYTES + 1) { /* over-long: skip it up to its newline */
        k->skipping = 1;
        k->len = 0;
    } else if (k->len && p != k->buf) {
        memmove(k->buf, p, k->len);
    }
}

/* -- main ------------------------------------------------------------------------ */

static int port_arg(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0 || v > 65535) {
        fprintf(stderr, "floor: bad port %s\n", s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    int port = -1, control = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = port_arg(argv[i + 1]);
        else if (strcmp(argv[i], "--control") == 0)
            control = port_arg(argv[i + 1]);
        else
            break;
    }
    if (port < 0 || control < 0 || argc != 5) {
        fprintf(stderr, "usage: floor --port P --control C   (0: the kernel picks)\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("floor starting up (C, epoll, %s)\n", __VERSION__);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("getrlimit");
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t soft = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            printf("file descriptor limit raised from %llu to %llu\n",
                   (unsigned long long)soft, (unsigned long long)rl.rlim_max);
        else
            rl.rlim_cur = soft;
    }
    nconns = rl.rlim_cur > 1 << 22 ? 1 << 22 : (int)rl.rlim_cur;
    if (!(conns = calloc(nconns, sizeof *conns)))
        die("calloc");

    /* SIGTERM and SIGINT arrive only inside epoll_pwait: no race, no EINTR elsewhere. */
    sigset_t block, during_wait;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &during_wait);
    sigdelset(&during_wait, SIGTERM);
    sigdelset(&during_wait, SIGINT);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    int sse_fd = listen_on(port, SSE_LISTENER, "SSE");
    int control_fd = listen_on(control, CONTROL_LISTENER, "control");

    struct epoll_event events[MAX_EVENTS];
    while (!stop_signal) {
        int n = epoll_pwait(ep, events, MAX_EVENTS, -1, &during_wait);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_pwait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            switch (conns[fd].kind) {
            case SSE_LISTENER:
                accept_all(fd, REQUEST);
                break;
            case CONTROL_LISTENER:
                accept_all(fd, CONTROL);
                break;
            case REQUEST:
                on_request(fd);
                break;
            case SUBSCRIBER:
                on_subscriber(fd);
                break;
            case CONTROL:
                on_control(fd);
                break;
            default: /* closed earlier in this batch */
                break;
            }
        }
    }

    printf("Received %s, shutting down.\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    static const char final_chunk[] = "0\r\n\r\n";
    for (int fd = 0; fd < nconns; fd++) {
        if (conns[fd].kind == SUBSCRIBER)
            send(fd, final_chunk, sizeof final_chunk - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (conns[fd].kind != FREE && fd != sse_fd && fd != control_fd)
            close_conn(fd);
    }
    close(sse_fd);
    close(control_fd);
    close(ep);
    printf("floor: closed %llu subscriber(s) whose send would block or was partial\n",
           slow_closed);
    return 0;
}
