/* A compiled load generator for the fair serving benchmark (bench/serving_fair.py), one client for
 * both targets: it replays pre-built requests (HTTP/1.1 keep-alive POSTs, or RESP MGET commands)
 * on C connections driven by epoll, parses every answer and checks its payload size.
 *
 *   loadgen http|redis PORT REQUESTS CONNS SECONDS WARMUP RATE EXPECT IDS [TIMEOUT]
 *
 * REQUESTS: records of a little-endian u32 length and that many bytes (bench/loadgen.py writes it);
 * connection k starts at record k * n / CONNS and walks all of them in turn. RATE 0: closed loop,
 * each connection sends its next request when the answer is complete. RATE > 0: open loop, Poisson
 * arrivals of RATE/s dispatched to the first free connection; a request's latency counts from its
 * scheduled time, so one that waits for a free connection shows that wait (no coordinated omission).
 * An answer is good when HTTP says 200 with Content-Length EXPECT, or RESP is an array of IDS bulk
 * strings of EXPECT bytes in all; anything else (status, error reply, null, size, closed connection,
 * no answer TIMEOUT seconds after the send, default 10) is an error. Requests scheduled in
 * [WARMUP, WARMUP + SECONDS) count; one JSON line on stdout: requests, errors, seconds, vectors (good answers x IDS),
 * warmup_requests, p50/p90/p99/max latency in microseconds (1 us histogram buckets up to 65 ms),
 * client_cpu_s (this process's user + system CPU, getrusage) and wall_s (warm-up and drain included).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FINE 65536           /* 1 us buckets below 65.536 ms */
#define COARSE (120 * 1000)  /* then 1 ms buckets up to 120 s */

typedef struct {
    const char *p;
    uint32_t n;
} Req;

typedef struct {
    int fd, busy, counted;
    size_t next;  /* index of the next request to send */
    double start; /* scheduled (open loop) or sent (closed loop) time of the request in flight */
    double sent;  /* when it was sent (the timeout counts from there) */
    char *buf;
    size_t len, cap;
} Conn;

static int redis_mode, port;
static unsigned long expect, ids;
static uint64_t hist[FINE + COARSE];
static uint64_t requests, errors, good, warm, max_us;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void record(double seconds, int ok) {
    uint64_t us = seconds > 0 ? (uint64_t)(seconds * 1e6) : 0;
    size_t b = us < FINE ? us : FINE + (us - FINE) / 1000;
    hist[b < FINE + COARSE ? b : FINE + COARSE - 1]++;
    if (us > max_us) max_us = us;
    requests++;
    if (ok) good++;
    else errors++;
}

static uint64_t percentile(double q) {
    uint64_t rank = (uint64_t)ceil(q * (double)requests), seen = 0;
    if (rank == 0) rank = 1;
    for (size_t b = 0; b < FINE + COARSE; b++) {
        seen += hist[b];
        if (seen >= rank) return b < FINE ? b : FINE + (b - FINE) * 1000;
    }
    return max_us;
}

static int connect_to(int epfd, Conn *c) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to 127.0.0.1");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->fd = fd;
    c->busy = 0;
    c->len = 0;
    return fd;
}

static void reconnect(int epfd, Conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    connect_to(epfd, c);
}

/* Length of a complete HTTP answer at the head of b (0: incomplete; *ok: 200 with EXPECT bytes). */
static size_t http_answer(const char *b, size_t n, int *ok) {
    const char *end = memmem(b, n, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - b) + 4, length = 0;
    int status = n > 12 && !strncmp(b, "HTTP/1.", 7) ? atoi(b + 9) : 0, has_length = 0;
    for (const char *line = memchr(b, '\n', head); line && line < end; line = memchr(line, '\n', (size_t)(end - line))) {
        line++;
        if (!strncasecmp(line, "content-length:", 15)) {
            length = strtoul(line + 15, NULL, 10);
            has_length = 1;
        }
    }
    if (!has_length) { /* a body without Content-Length (chunked) is not what the servers send */
        *ok = -1;
        return head;
    }
    if (n < head + length) return 0;
    *ok = status == 200 && length == expect;
    return head + length;
}

/* Position after the CRLF-terminated integer at b[i] (0: incomplete). */
static size_t resp_int(const char *b, size_t n, size_t i, long *v) {
    const char *eol = memmem(b + i, n - i, "\r\n", 2);
    if (!eol) return 0;
    *v = strtol(b + i, NULL, 10);
    return (size_t)(eol - b) + 2;
}

/* Length of a complete RESP reply at the head of b (0: incomplete; *ok: an array of IDS bulk strings, EXPECT bytes). */
static size_t redis_answer(const char *b, size_t n, int *ok) {
    long count, len;
    size_t i;
    if (n < 1) return 0;
    if (b[0] != '*') { /* an error or any other reply: one line */
        const char *eol = memmem(b, n, "\r\n", 2);
        *ok = 0;
        return eol ? (size_t)(eol - b) + 2 : 0;
    }
    if (!(i = resp_int(b, n, 1, &count))) return 0;
    unsigned long bytes = 0;
    int fine = 1;
    for (long k = 0; k < count; k++) {
        if (i >= n) return 0;
        if (b[i] != '$') {
            *ok = -1;
            return i;
        }
        if (!(i = resp_int(b, n, i + 1, &len))) return 0;
        if (len < 0) { /* a null: a missing key */
            fine = 0;
            continue;
        }
        if (n < i + (size_t)len + 2) return 0;
        bytes += (unsigned long)len;
        i += (size_t)len + 2;
    }
    *ok = fine && (unsigned long)count == ids && bytes == expect;
    return i;
}

static void send_request(Conn *c, const Req *reqs, size_t nreq, double start, int counted) {
    const Req *r = &reqs[c->next];
    c->next = (c->next + 1) % nreq;
    for (size_t off = 0; off < r->n;) {
        ssize_t w = send(c->fd, r->p + off, r->n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break; /* the read side sees the closed connection */
        off += (size_t)w;
    }
    c->busy = 1;
    c->start = start;
    c->sent = now();
    c->counted = counted;
}

static Req *load_requests(const char *path, size_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *data = malloc((size_t)size + 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) die("read requests");
    fclose(f);
    size_t n = 0, cap = 64;
    Req *reqs = malloc(cap * sizeof *reqs);
    for (long i = 0; i + 4 <= size;) {
        uint32_t len = (uint32_t)(unsigned char)data[i] | (uint32_t)(unsigned char)data[i + 1] << 8 |
                       (uint32_t)(unsigned char)data[i + 2] << 16 | (uint32_t)(unsigned char)data[i + 3] << 24;
        if (i + 4 + (long)len > size) break;
        if (n == cap) reqs = realloc(reqs, (cap *= 2) * sizeof *reqs);
        reqs[n].p = data + i + 4;
        reqs[n++].n = len;
        i += 4 + (long)len;
    }
    if (!n) {
        fprintf(stderr, "loadgen: %s holds no request records\n", path);
        exit(2);
    }
    *count = n;
    return reqs;
}

int main(int argc, char **argv) {
    if (argc < 10 || (strcmp(argv[1], "http") && strcmp(argv[1], "redis"))) {
        fprintf(stderr, "usage: loadgen http|redis PORT REQUESTS CONNS SECONDS WARMUP RATE EXPECT IDS [TIMEOUT]\n");
        return 2;
    }
    redis_mode = !strcmp(argv[1], "redis");
    port = atoi(argv[2]);
    int nconn = atoi(argv[4]);
    double seconds = atof(argv[5]), warmup = atof(argv[6]), rate = atof(argv[7]), timeout = argc > 10 ? atof(argv[10]) : 10.0;
    expect = strtoul(argv[8], NULL, 10);
    ids = strtoul(argv[9], NULL, 10);
    if (nconn < 1 || seconds <= 0 || rate < 0) {
        fprintf(stderr, "loadgen: CONNS must be >= 1, SECONDS > 0, RATE >= 0\n");
        return 2;
    }
    size_t nreq;
    Req *reqs = load_requests(argv[3], &nreq);
    int epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    Conn *conns = calloc((size_t)nconn, sizeof *conns);
    for (int k = 0; k < nconn; k++) {
        conns[k].cap = 1 << 16;
        conns[k].buf = malloc(conns[k].cap);
        conns[k].next = (size_t)k * nreq / (size_t)nconn;
        connect_to(epfd, &conns[k]);
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ids;
    double t0 = now(), from = t0 + warmup, until = from + seconds, next = t0;
    struct epoll_event evs[64];
    for (;;) {
        double t = now();
        int busy = 0;
        for (int k = 0; k < nconn; k++) {
            Conn *c = &conns[k];
            if (c->busy && t - c->sent > timeout) { /* no answer in time: an error, and a fresh connection */
                if (c->counted) record(t - c->start, 0);
                reconnect(epfd, c);
            }
            if (!c->busy) {
                if (rate == 0 && t < until) send_request(c, reqs, nreq, t, t >= from);
                else if (rate > 0 && next <= t && next < until) {
                    send_request(c, reqs, nreq, next, next >= from);
                    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
                    next += -log(((double)((rng * 0x2545F4914F6CDD1Dull) >> 11) + 0.5) / 9007199254740992.0) / rate;
                }
            }
            busy += c->busy;
        }
        if (!busy && t >= until && (rate == 0 || next >= until)) break;
        /* open loop with a free connection: wake at the next arrival; else for answers (and timeouts) */
        double wait = rate > 0 && next < until && busy < nconn ? next - t : 0.05;
        if (wait < 0) wait = 0;
        struct timespec ts = {.tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9)};
        int ready = epoll_pwait2(epfd, evs, 64, &ts, NULL);
        if (ready < 0 && errno != EINTR) die("epoll_pwait2");
        for (int e = 0; e < ready; e++) {
            Conn *c = evs[e].data.ptr;
            if (c->len == c->cap) c->buf = realloc(c->buf, c->cap *= 2);
            ssize_t got = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) { /* closed by the server */
                if (c->busy && c->counted) record(now() - c->start, 0);
                reconnect(epfd, c);
                continue;
            }
            c->len += (size_t)got;
            int ok = 0;
            size_t used = redis_mode ? redis_answer(c->buf, c->len, &ok) : http_answer(c->buf, c->len, &ok);
            if (!used) continue;
            if (!c->busy) ok = 0; /* an answer nobody asked for */
            if (c->counted) record(now() - c->start, ok == 1);
            else warm++;
            c->busy = 0;
            if (ok < 0) reconnect(epfd, c); /* framing we cannot follow: start the connection over */
            else {
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
            }
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    printf("{\"requests\": %llu, \"errors\": %llu, \"seconds\": %.6f, \"vectors\": %llu, \"warmup_requests\": %llu, "
           "\"p50_us\": %llu, \"p90_us\": %llu, \"p99_us\": %llu, \"max_us\": %llu, \"client_cpu_s\": %.6f, \"wall_s\": %.6f}\n",
           (unsigned long long)requests, (unsigned long long)errors, seconds, (unsigned long long)(good * ids), (unsigned long long)warm,
           (unsigned long long)percentile(0.50), (unsigned long long)percentile(0.90), (unsigned long long)percentile(0.99),
           (unsigned long long)max_us, cpu, now() - t0);
    return 0;
}
