/* loadgen.c: N readers of one channel on one core, for benchmarks/cload.py.
 *
 *   loadgen SERVER TECHNIQUE PORT READERS [SAMPLED [CPU [PAUSE_US]]]
 *
 * SERVER is tidings or nchan, TECHNIQUE websocket, sse or longpoll. It opens
 * READERS connections to 127.0.0.1:PORT (200 at a time until each is
 * subscribed), pins itself to CPU (default 1) and reads channel "bench" with
 * the requests of the Python clients in _loadgen.py (tidings) and nchan.py
 * (nchan). One thread, one epoll loop, plain libc: its own code costs about
 * 0.1 us per message, the rest is the kernel's, and it reads several messages
 * at once when they queue, so full-rate runs measure the server, not it.
 *
 * Every reader counts its messages. The first SAMPLED readers (default 50)
 * also parse the publisher's timestamp {"t":SECONDS.MICROS,...} out of each
 * message and, between "start" and "stop", record publish-to-arrival latency.
 *
 * With PAUSE_US (default 0) it sleeps that long before each wait for readable
 * sockets, once every reader is subscribed. On loopback the server's write wakes
 * a reader that waits in epoll_wait, and the server's CPU time pays for it; a
 * reader that sleeps is not woken, as a client on another machine never is.
 * The pause adds up to PAUSE_US to each latency.
 *
 * Once every reader is subscribed it prints {"ready":READERS}. Then it reads
 * one command per line on stdin and answers each with one JSON line:
 *   start         latency samples from now on: {"received":R,"reads":N,"cpu":S}
 *   stop          no more samples:             {"received":R,"reads":N,"cpu":S}
 *   status TOTAL  {"received":R,"missing":M,"extra":X,"errors":E,"first_error":"..."}
 *                 (M and X: messages short of / beyond TOTAL, summed over readers)
 *   latency       {"samples":N,"p50_ms":..,"p99_ms":..}
 *   quit, or end of input: exit.
 * R is the messages received by all readers so far, N the reads (recv calls) that
 * returned bytes, S this process's CPU seconds.
 * A reader that fails before it is subscribed ends the program with {"error":"..."}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONNECTING_AT_ONCE 200
#define FIRST_BUFFER (1 << 20) /* grows when one response or frame is larger */
#define MAX_HEAD 16384         /* bytes of an HTTP head we wait for before giving up */

enum technique { WEBSOCKET, SSE, LONGPOLL };

struct reader {
    int fd;
    int index;
    int opened;     /* TCP connected and request sent */
    int head_done;  /* websocket, sse: the HTTP head of the stream has been read */
    int ready;      /* subscribed: counted in {"ready":N} */
    int sampled;
    long count;     /* messages received */
    char *rest;     /* bytes of an incomplete frame, event or response, kept for the next read */
    size_t rest_len, rest_cap;
    char *since;    /* long poll: tidings' ?since= cursor, or nchan's If-* header lines */
};

static int nchan, technique, port, reader_count, ready_count, opened_count;
static struct reader *readers;
static int epoll_fd;
static char *buf;
static size_t buf_cap = FIRST_BUFFER;
static long received, reads;
static int measuring;
static double *samples;
static size_t sample_count, sample_cap;
static long errors;
static char first_error[200];

/* --- output and failures ---------------------------------------------------------------- */

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec
         + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

/* Copy printable ASCII only, so that the text is safe inside a JSON string. */
static void json_safe(char *out, size_t size, const char *text, size_t len) {
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < size; i++)
        out[j++] = (text[i] >= 32 && text[i] < 127 && text[i] != '"' && text[i] != '\\')
                 ? text[i] : '.';
    out[j] = 0;
}

/* A reader saw something it should not have: count it, remember the first. */
static void error_at(struct reader *r, const char *what, const char *data, size_t len) {
    char shown[120];
    json_safe(shown, sizeof shown, data, len < 80 ? len : 80);
    if (!r->ready) {  /* a reader that never subscribed makes the whole run meaningless */
        printf("{\"error\":\"reader %d: %s %s\"}\n", r->index, what, shown);
        exit(1);
    }
    if (errors++ == 0)
        snprintf(first_error, sizeof first_error, "reader %d: %s %s", r->index, what, shown);
}

static void send_all(struct reader *r, const char *data, size_t len) {
    ssize_t sent = send(r->fd, data, len, MSG_NOSIGNAL);
    if (sent != (ssize_t)len)  /* requests and pongs are small: a full socket buffer is a bug */
        error_at(r, "short send", strerror(errno), strlen(strerror(errno)));
}

/* --- latency --------------------------------------------------------------------------------- */

/* A sampled reader got MESSAGE: record now minus the publisher's "t". */
static void record(const char *message, size_t len) {
    if (!measuring)
        return;
    const char *t = memmem(message, len, "{\"t\":", 5);
    if (t == NULL)
        return;
    char number[32];
    size_t n = len - (size_t)(t + 5 - message);
    n = n < sizeof number - 1 ? n : sizeof number - 1;
    memcpy(number, t + 5, n);
    number[n] = 0;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (sample_count == sample_cap) {
        sample_cap = sample_cap ? 2 * sample_cap : 65536;
        samples = realloc(samples, sample_cap * sizeof *samples);
    }
    samples[sample_count++] = now.tv_sec + now.tv_nsec / 1e9 - strtod(number, NULL);
}

static void message(struct reader *r, const char *data, size_t len) {
    r->count++;
    received++;
    if (r->sampled)
        record(data, len);
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The same rank as _loadgen.percentile(). */
static double percentile(double fraction) {
    if (sample_count == 0)
        return -1;
    size_t at = (size_t)(fraction * sample_count);
    return samples[at < sample_count ? at : sample_count - 1];
}

/* --- requests --------------------------------------------------------------------------------- */

static void send_request(struct reader *r) {
    char request[1024];
    int len;
    const char *path = nchan ? "/sub?id=bench" : "/channels/bench";
    if (technique == WEBSOCKET)
        len = snprintf(request, sizeof request,
                       "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n", path, port);
    else if (technique == SSE)
        len = snprintf(request, sizeof request,
                       "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\n\r\n",
                       path, port);
    else if (nchan)  /* from the last answer's Last-Modified and Etag */
        len = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n",
                       path, port, r->since ? r->since : "");
    else if (r->since)  /* from the last answer's "next" */
        len = snprintf(request, sizeof request,
                       "GET %s?since=%s&wait=30 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                       path, r->since, port);
    else  /* a plain poll from the end of the log: it answers the first cursor */
        len = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                       path, port);
    send_all(r, request, (size_t)len);
}

static void mark_ready(struct reader *r) {
    if (!r->ready) {
        r->ready = 1;
        ready_count++;
    }
}

/* --- WebSocket: frames ----------------------------------------------------------------------- */

static size_t read_frames(struct reader *r, const char *data, size_t len) {
    const unsigned char *u = (const unsigned char *)data;
    size_t pos = 0;
    while (len - pos >= 2) {
        int opcode = u[pos] & 0x0F;
        size_t length = u[pos + 1] & 0x7F, start = pos + 2;
        if (length == 126) {
            if (len - pos < 4)
                break;
            length = (size_t)u[pos + 2] << 8 | u[pos + 3];
            start = pos + 4;
        } else if (length == 127) {
            if (len - pos < 10)
                break;
            length = 0;
            for (int i = 2; i < 10; i++)
                length = length << 8 | u[pos + i];
            start = pos + 10;
        }
        if (len - start < length)
            break;
        const char *payload = data + start;
        if (opcode == 0x1 && nchan) {  /* nchan: each text frame is a published body */
            message(r, payload, length);
        } else if (opcode == 0x1) {
            if (length >= 17 && memcmp(payload, "{\"type\":\"message\"", 17) == 0)
                message(r, payload, length);
            else if (length >= 20 && memcmp(payload, "{\"type\":\"subscribed\"", 20) == 0
                     && !r->ready)
                mark_ready(r);
            else if (!(length >= 16 && memcmp(payload, "{\"type\":\"status\"", 16) == 0))
                error_at(r, "frame", payload, length);
        } else if (opcode == 0x9 && length <= 125) {  /* ping: pong, masked with a zero key */
            char pong[6 + 125] = {(char)0x8A, (char)(0x80 | length), 0, 0, 0, 0};
            memcpy(pong + 6, payload, length);
            send_all(r, pong, 6 + length);
        } else if (opcode == 0x8) {
            error_at(r, "closed", payload, length);
        } else if (opcode != 0xA) {
            error_at(r, "unexpected frame", data + pos, start + length - pos);
        }
        pos = start + length;
    }
    return pos;
}

/* Whether the bytes from AT to END start with PREFIX. */
static int starts(const char *at, const char *end, const char *prefix) {
    size_t len = strlen(prefix);
    return (size_t)(end - at) >= len && memcmp(at, prefix, len) == 0;
}

/* --- SSE: events ----------------------------------------------------------------------------- */

/* An event without an "event:" line and with a "data:" line is a message. tidings names its
 * other events (client, status, subscribed: fine; gap, close: errors); nchan opens with a
 * ": hi" comment. The first event of the stream says it is subscribed. Both servers end
 * lines with "\n" alone. */
static size_t read_events(struct reader *r, const char *data, size_t len) {
    size_t pos = 0;
    const char *end;
    while ((end = memmem(data + pos, len - pos, "\n\n", 2)) != NULL) {
        const char *line = data + pos, *stop = end + 1, *name = NULL, *payload = NULL;
        while (line < stop) {
            const char *eol = memchr(line, '\n', (size_t)(stop - line));
            if (starts(line, eol, "event:"))
                name = line;
            else if (starts(line, eol, "data:") && payload == NULL)
                payload = line + 5;
            line = eol + 1;
        }
        if (name == NULL && payload != NULL)
            message(r, payload, (size_t)(end - payload));
        else if (name != NULL && (starts(name, stop, "event: gap\n")
                                  || starts(name, stop, "event: close\n")))
            error_at(r, "event", data + pos, (size_t)(end - data - pos));
        mark_ready(r);
        pos = (size_t)(end - data) + 2;
    }
    return pos;
}

/* --- long poll: whole HTTP responses ---------------------------------------------------------- */

/* The value of header NAME in HEAD (which ends with "\r\n\r\n"), and its length. */
static const char *header(const char *head, size_t head_len, const char *name, size_t *len) {
    size_t name_len = strlen(name);
    const char *line = memmem(head, head_len, "\r\n", 2), *end = head + head_len;
    while (line != NULL && line + 2 < end) {
        line += 2;
        const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (eol == NULL)
            break;
        if ((size_t)(eol - line) > name_len + 1 && strncasecmp(line, name, name_len) == 0
            && line[name_len] == ':') {
            const char *value = line + name_len + 1;
            while (*value == ' ')
                value++;
            *len = (size_t)(eol - value);
            return value;
        }
        line = eol;
    }
    return NULL;
}

static void set_since(struct reader *r, const char *format, ...) {
    va_list args;
    va_start(args, format);
    free(r->since);
    if (vasprintf(&r->since, format, args) < 0)
        r->since = NULL;
    va_end(args);
}

/* tidings: {"messages":[{"channel":..},..],"next":"CURSOR"}; nchan: the published body. */
static void answer(struct reader *r, int status, const char *head, size_t head_len,
                   const char *body, size_t len) {
    if (status == 304) {
        /* nothing new: ask again */
    } else if (status != 200) {
        error_at(r, "answered", head, head_len);
        return;
    } else if (nchan) {
        size_t modified_len = 0, etag_len = 0;
        const char *modified = header(head, head_len, "Last-Modified", &modified_len);
        const char *etag = header(head, head_len, "Etag", &etag_len);
        set_since(r, "If-Modified-Since: %.*s\r\nIf-None-Match: %.*s\r\n",
                  (int)modified_len, modified ? modified : "", (int)etag_len, etag ? etag : "");
        message(r, body, len);
    } else {
        const char *next = memmem(body, len, "\"next\":\"", 8);
        const char *end = next ? memchr(next + 8, '"', (size_t)(body + len - next - 8)) : NULL;
        if (end == NULL) {
            error_at(r, "no next cursor", body, len);
            return;
        }
        set_since(r, "%.*s", (int)(end - next - 8), next + 8);
        if (memmem(body, len, "\"gap\":true", 10) != NULL)
            error_at(r, "gap", body, len);
        const char *at = body, *stop = body + len;
        while ((at = memmem(at, (size_t)(stop - at), "{\"channel\":", 11)) != NULL) {
            const char *following = memmem(at + 11, (size_t)(stop - at - 11), "{\"channel\":", 11);
            message(r, at, (size_t)((following ? following : stop) - at));
            at = following ? following : stop;
        }
    }
    mark_ready(r);
    send_request(r);
}

static size_t read_responses(struct reader *r, const char *data, size_t len) {
    size_t pos = 0;
    const char *end;
    while ((end = memmem(data + pos, len - pos, "\r\n\r\n", 4)) != NULL) {
        const char *head = data + pos;
        size_t head_len = (size_t)(end + 4 - head), body_len = 0, value_len;
        const char *value = header(head, head_len, "Content-Length", &value_len);
        if (value != NULL)
            body_len = strtoul(value, NULL, 10);
        else if (header(head, head_len, "Transfer-Encoding", &value_len) != NULL)
            error_at(r, "chunked answer", head, head_len);
        if (len - pos - head_len < body_len)
            break;
        int status = head_len > 12 ? atoi(head + 9) : 0;
        answer(r, status, head, head_len, end + 4, body_len);
        pos += head_len + body_len;
    }
    if (pos == 0 && len > MAX_HEAD && memmem(data, len, "\r\n\r\n", 4) == NULL)
        error_at(r, "head too long", data, len);
    return pos;
}

/* --- reading ----------------------------------------------------------------------------------- */

/* Read DATA; return how many bytes were used (the rest waits for more). */
static size_t consume(struct reader *r, const char *data, size_t len) {
    size_t pos = 0;
    if (technique == LONGPOLL)
        return read_responses(r, data, len);
    if (!r->head_done) {
        const char *end = memmem(data, len, "\r\n\r\n", 4);
        if (end == NULL) {
            if (len > MAX_HEAD)
                error_at(r, "head too long", data, len);
            return 0;
        }
        const char *expected = technique == WEBSOCKET ? "HTTP/1.1 101" : "HTTP/1.1 200";
        if (len < 12 || memcmp(data, expected, 12) != 0)
            error_at(r, "answered", data, len);
        r->head_done = 1;
        if (technique == WEBSOCKET && nchan)  /* nchan sends nothing more until a message */
            mark_ready(r);
        pos = (size_t)(end + 4 - data);
    }
    return pos + (technique == WEBSOCKET ? read_frames : read_events)(r, data + pos, len - pos);
}

static void on_readable(struct reader *r) {
    if (r->rest_len + 65536 > buf_cap) {
        buf_cap = 2 * (r->rest_len + 65536);
        buf = realloc(buf, buf_cap);
    }
    memcpy(buf, r->rest, r->rest_len);
    ssize_t n = recv(r->fd, buf + r->rest_len, buf_cap - r->rest_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        const char *why = n < 0 ? strerror(errno) : "EOF";
        error_at(r, "connection lost", why, strlen(why));
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, r->fd, NULL);
        close(r->fd);
        return;
    }
    reads++;
    size_t have = r->rest_len + (size_t)n, used = consume(r, buf, have);
    r->rest_len = have - used;
    if (r->rest_len > r->rest_cap) {
        r->rest_cap = r->rest_len;
        r->rest = realloc(r->rest, r->rest_cap);
    }
    memcpy(r->rest, buf + used, r->rest_len);
}

/* --- connecting ---------------------------------------------------------------------------------- */

static void open_reader(struct reader *r) {
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (r->fd < 0)
        error_at(r, "socket", strerror(errno), strlen(strerror(errno)));
    setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* as asyncio does */
    if (connect(r->fd, (struct sockaddr *)&address, sizeof address) < 0 && errno != EINPROGRESS)
        error_at(r, "connect", strerror(errno), strlen(strerror(errno)));
    struct epoll_event event = {.events = EPOLLOUT, .data.ptr = r};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, r->fd, &event);
    opened_count++;
}

static void on_connected(struct reader *r) {
    int error = 0;
    socklen_t size = sizeof error;
    getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &error, &size);
    if (error != 0)
        error_at(r, "connect", strerror(error), strlen(strerror(error)));
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = r};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, r->fd, &event);
    r->opened = 1;
    send_request(r);
    if (technique == LONGPOLL && nchan)  /* subscribed once asked, as nchan.py assumes */
        mark_ready(r);
}

/* --- commands ------------------------------------------------------------------------------------ */

static void command(char *line) {
    if (strcmp(line, "start") == 0 || strcmp(line, "stop") == 0) {
        measuring = strcmp(line, "start") == 0;
        if (measuring)
            sample_count = 0;
        printf("{\"received\":%ld,\"reads\":%ld,\"cpu\":%.6f}\n", received, reads,
               cpu_seconds());
    } else if (strncmp(line, "status ", 7) == 0) {
        long total = atol(line + 7), missing = 0, extra = 0;
        for (int i = 0; i < reader_count; i++) {
            missing += readers[i].count < total ? total - readers[i].count : 0;
            extra += readers[i].count > total ? readers[i].count - total : 0;
        }
        printf("{\"received\":%ld,\"missing\":%ld,\"extra\":%ld,\"errors\":%ld,"
               "\"first_error\":\"%s\"}\n", received, missing, extra, errors, first_error);
    } else if (strcmp(line, "latency") == 0) {
        qsort(samples, sample_count, sizeof *samples, compare);
        printf("{\"samples\":%zu,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n", sample_count,
               1000 * percentile(0.50), 1000 * percentile(0.99));
    } else if (strcmp(line, "quit") == 0) {
        exit(0);
    } else {
        printf("{\"error\":\"unknown command\"}\n");
    }
    fflush(stdout);
}

static void on_stdin(void) {
    static char line[256];
    static size_t len;
    ssize_t n = read(0, line + len, sizeof line - 1 - len);
    if (n <= 0)
        exit(0);
    len += (size_t)n;
    char *end;
    while ((end = memchr(line, '\n', len)) != NULL) {
        *end = 0;
        command(line);
        len -= (size_t)(end + 1 - line);
        memmove(line, end + 1, len);
    }
    if (len == sizeof line - 1)
        len = 0;  /* a line that long is no command */
}

/* --- main ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc < 5 || (strcmp(argv[1], "tidings") != 0 && strcmp(argv[1], "nchan") != 0)) {
        fprintf(stderr, "usage: %s tidings|nchan websocket|sse|longpoll PORT READERS "
                        "[SAMPLED [CPU [PAUSE_US]]]\n", argv[0]);
        return 2;
    }
    nchan = strcmp(argv[1], "nchan") == 0;
    if (strcmp(argv[2], "websocket") == 0)
        technique = WEBSOCKET;
    else if (strcmp(argv[2], "sse") == 0)
        technique = SSE;
    else if (strcmp(argv[2], "longpoll") == 0)
        technique = LONGPOLL;
    else {
        fprintf(stderr, "unknown technique %s\n", argv[2]);
        return 2;
    }
    port = atoi(argv[3]);
    reader_count = atoi(argv[4]);
    int sampled = argc > 5 ? atoi(argv[5]) : 50, cpu = argc > 6 ? atoi(argv[6]) : 1;
    long pause_us = argc > 7 ? atol(argv[7]) : 0;
    struct timespec pause = {pause_us / 1000000, pause_us % 1000000 * 1000};

    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(cpu, &cpus);
    sched_setaffinity(0, sizeof cpus, &cpus);  /* on a one-CPU machine: run where we are */
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);

    readers = calloc((size_t)reader_count, sizeof *readers);
    buf = malloc(buf_cap);
    epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};  /* NULL: stdin */
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, 0, &event);
    for (int i = 0; i < reader_count; i++) {
        readers[i].index = i;
        readers[i].sampled = i < sampled;
    }

    struct epoll_event events[512];
    int announced = 0;
    for (;;) {
        while (opened_count < reader_count && opened_count - ready_count < CONNECTING_AT_ONCE)
            open_reader(&readers[opened_count]);
        if (!announced && ready_count == reader_count) {
            printf("{\"ready\":%d}\n", ready_count);
            fflush(stdout);
            announced = 1;
        }
        if (pause_us > 0 && announced)
            nanosleep(&pause, NULL);
        int n = epoll_wait(epoll_fd, events, 512, -1);
        for (int i = 0; i < n; i++) {
            struct reader *r = events[i].data.ptr;
            if (r == NULL)
                on_stdin();
            else if (!r->opened)
                on_connected(r);
            else
                on_readable(r);
        }
    }
}
