/*
 * Load generator for `cargo xtask bench` (issue 7). Built at bench time with `cc -O2 -pthread`
 * into target/bench/load. Run through a copy named like an agent's comm (`am-bench`) it is that
 * agent; run as `load` it is not.
 *
 *   load open N PATH              open(PATH, O_WRONLY|O_CREAT) + close, N times
 *   load write N PATH             write(2) of 64 bytes to PATH, opened once (O_WRONLY|O_CREAT|
 *                                 O_TRUNC); back to offset 0 every 4096 writes
 *   load ssl N CERT KEY METHOD    SSL_write of a 64-byte HTTP request (METHOD /, e.g. GET) on a
 *                                 TLS client connected in-process, through memory BIOs, to a
 *                                 TLS server with CERT/KEY (the handshake is outside the loop;
 *                                 the ciphertext is discarded every 64 writes, never read)
 *   load connect N                TCP connect + close to 127.0.0.1 (its own listener, in a thread)
 *   load udp N                    sendto 127.0.0.1 (its own bound receiver, never read)
 *                                 (connect/udp: an EPERM, an agent refused, counts as `refused`)
 *   load fork N                   fork + waitpid, the child _exits
 *   load exec N                   fork + execve /bin/true + waitpid
 *   load post N PORT WAIT_MS      N connections to 127.0.0.1:PORT, each sends one raw HTTP POST,
 *                                 waits up to WAIT_MS for a reply, then aborts (RST, no TIME_WAIT)
 *   load killtime N AGENT PATH    N times: fork, exec AGENT (an agent copy of this tool) in mode
 *                                 `forbid PATH FD`; it reports its clock, then opens PATH for
 *                                 write; the parent measures until waitpid sees it die
 *   load forbid PATH FD           (used by killtime) write CLOCK_MONOTONIC ns to FD, open PATH
 *   load sleep                    sleep until killed (an agent process kept alive)
 *   load pace RATE SECS THREADS PATH
 *                                 THREADS threads open(PATH, O_WRONLY|O_CREAT) + close, together
 *                                 RATE per second (0: as fast as they can) for SECS seconds;
 *                                 prints `ops=<n> secs=<float> rate=<float> errors=<n>`
 *
 * Built with -DHAVE_SSL (and -lssl -lcrypto) when OpenSSL's headers are there; without, `ssl`
 * says so and exits 3.
 *
 * The timed modes print one line: `ns_per_op=<float> ops=<n> errors=<n> refused=<n>`; the
 * measurement is the
 * loop alone (set-up such as the listener is outside it). TCP sockets close with SO_LINGER 0 so
 * thousands of runs leave no TIME_WAIT behind to exhaust ephemeral ports.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* Operations refused with EPERM (an agent's connect/sendto under `deny`): not errors. */
static long refused;

static void report(uint64_t t0, long n, long errors) {
    double ns = (double)(now_ns() - t0) / (double)n;
    printf("ns_per_op=%.1f ops=%ld errors=%ld refused=%ld\n", ns, n, errors, refused);
}

static void abort_close(int fd) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static struct sockaddr_in loopback(uint16_t port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A socket bound to 127.0.0.1 on a free port; returns the port. */
static uint16_t bind_loopback(int fd) {
    struct sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) die("getsockname");
    return ntohs(a.sin_port);
}

static long mode_open(long n, const char *path) {
    long errors = 0;
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0)
            errors++;
        else
            close(fd);
    }
    return errors;
}

static long mode_write(long n, const char *path, uint64_t *t0) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    char buf[64];
    memset(buf, 'x', sizeof buf);
    long errors = 0;
    *t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) errors++;
        if ((i & 4095) == 4095) lseek(fd, 0, SEEK_SET);
    }
    close(fd);
    return errors;
}

#ifdef HAVE_SSL
#include <openssl/err.h>
#include <openssl/ssl.h>

static void ssl_die(const char *what) {
    fprintf(stderr, "load ssl: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static long mode_ssl(long n, const char *cert, const char *key, const char *method, uint64_t *t0) {
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    if (!sctx || !cctx) ssl_die("SSL_CTX_new");
    if (SSL_CTX_use_certificate_file(sctx, cert, SSL_FILETYPE_PEM) != 1) ssl_die("certificate");
    if (SSL_CTX_use_PrivateKey_file(sctx, key, SSL_FILETYPE_PEM) != 1) ssl_die("key");
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    if (!s || !c) ssl_die("SSL_new");
    /* c2s: what the client writes and the server reads; s2c the other way. */
    BIO *c2s = BIO_new(BIO_s_mem()), *s2c = BIO_new(BIO_s_mem());
    if (!c2s || !s2c) ssl_die("BIO_new");
    BIO_set_mem_eof_return(c2s, -1);
    BIO_set_mem_eof_return(s2c, -1);
    BIO_up_ref(c2s);
    BIO_up_ref(s2c);
    SSL_set_bio(c, s2c, c2s);
    SSL_set_bio(s, c2s, s2c);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    int cdone = 0, sdone = 0;
    for (int i = 0; i < 100 && !(cdone && sdone); i++) {
        if (!cdone) {
            int r = SSL_do_handshake(c);
            if (r == 1)
                cdone = 1;
            else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ)
                ssl_die("client handshake");
        }
        if (!sdone) {
            int r = SSL_do_handshake(s);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
                ssl_die("server handshake");
        }
    }
    if (!(cdone && sdone)) ssl_die("the handshake did not finish");
    /* A 64-byte request: METHOD / HTTP/1.1, padded in a header. */
    char req[65];
    int len = snprintf(req, sizeof req, "%s / HTTP/1.1\r\nHost: x\r\nX: ", method);
    while (len < 60) req[len++] = 'x';
    memcpy(req + 60, "\r\n\r\n", 4);
    len = 64;
    long errors = 0;
    *t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (SSL_write(c, req, len) != len) errors++;
        if ((i & 63) == 63) (void)BIO_reset(c2s);
    }
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    return errors;
}
#else
static long mode_ssl(long n, const char *cert, const char *key, const char *method, uint64_t *t0) {
    (void)n, (void)cert, (void)key, (void)method, (void)t0;
    fprintf(stderr, "load ssl: built without OpenSSL (no -DHAVE_SSL)\n");
    exit(3);
}
#endif

struct pace {
    const char *path;
    double rate; /* per thread, 0: unpaced */
    uint64_t t0, end;
    long ops, errors;
};

static void *pacer(void *arg) {
    struct pace *p = arg;
    long ops = 0, errors = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= p->end) break;
        if (p->rate > 0) {
            /* Ahead of the schedule: wait (short sleeps, then spin) until the next op is due. */
            double due = (double)(t - p->t0) * p->rate / 1e9;
            if ((double)ops >= due) {
                double wait_ns = ((double)ops + 1.0 - due) * 1e9 / p->rate;
                if (wait_ns > 60000) {
                    struct timespec ts = {0, (long)(wait_ns - 50000)};
                    nanosleep(&ts, NULL);
                }
                continue;
            }
        }
        int fd = open(p->path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0)
            errors++;
        else
            close(fd);
        ops++;
    }
    p->ops = ops;
    p->errors = errors;
    return NULL;
}

static int mode_pace(double rate, double secs, long threads, const char *path) {
    if (threads < 1 || threads > 64) threads = 1;
    struct pace p[64];
    pthread_t th[64];
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(secs * 1e9);
    for (long i = 0; i < threads; i++) {
        p[i] = (struct pace){path, rate / (double)threads, t0, end, 0, 0};
        if (pthread_create(&th[i], NULL, pacer, &p[i]) != 0) die("pthread_create");
    }
    long ops = 0, errors = 0;
    for (long i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ops += p[i].ops;
        errors += p[i].errors;
    }
    double took = (double)(now_ns() - t0) / 1e9;
    printf("ops=%ld secs=%.3f rate=%.1f errors=%ld\n", ops, took, (double)ops / took, errors);
    return 0;
}

static void *acceptor(void *arg) {
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c >= 0) close(c);
    }
    return NULL;
}

static long mode_connect(long n, uint64_t *t0) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(bind_loopback(lfd));
    if (listen(lfd, 4096) < 0) die("listen");
    pthread_t th;
    if (pthread_create(&th, NULL, acceptor, (void *)(intptr_t)lfd) != 0) die("pthread_create");
    long errors = 0;
    *t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            errors++;
            continue;
        }
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            if (errno == EPERM)
                refused++;
            else
                errors++;
        }
        abort_close(fd);
    }
    return errors;
}

static long mode_udp(long n, uint64_t *t0) {
    int rfd = socket(AF_INET, SOCK_DGRAM, 0);
    if (rfd < 0) die("socket");
    struct sockaddr_in a = loopback(bind_loopback(rfd));
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    long errors = 0;
    char byte = 'x';
    *t0 = now_ns();
    for (long i = 0; i < n; i++)
        if (sendto(fd, &byte, 1, 0, (struct sockaddr *)&a, sizeof a) != 1) {
            if (errno == EPERM)
                refused++;
            else
                errors++;
        }
    return errors;
}

static long mode_fork(long n, int do_exec) {
    long errors = 0;
    char *argv[] = {"true", NULL};
    char *envp[] = {NULL};
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) {
            errors++;
            continue;
        }
        if (p == 0) {
            if (do_exec) execve("/bin/true", argv, envp);
            _exit(do_exec ? 127 : 0);
        }
        int st;
        if (waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) errors++;
    }
    return errors;
}

/* Raw HTTP POSTs; prints how many connections, sends and replies there were. */
static int mode_post(long n, uint16_t port, long wait_ms) {
    static const char req[] = "POST /answer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    struct sockaddr_in a = loopback(port);
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    long connected = 0, sent = 0, replies = 0, killed_errors = 0;
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            killed_errors++;
            close(fd);
            continue;
        }
        connected++;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1)) sent++;
        char buf[256];
        if (recv(fd, buf, sizeof buf, 0) > 0) replies++;
        abort_close(fd);
    }
    printf("attempts=%ld connected=%ld sent=%ld replies=%ld request_bytes=%zu connect_errors=%ld\n", n, connected,
           sent, replies, sizeof req - 1, killed_errors);
    return 0;
}

/* Time from just before a forbidden open to the moment waitpid sees the agent dead. */
static int mode_killtime(long n, const char *agent, const char *path) {
    long killed = 0, survived = 0;
    double sum = 0;
    printf("latencies_ns=");
    for (long i = 0; i < n; i++) {
        int p[2];
        if (pipe(p) < 0) die("pipe");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            char fd[16];
            snprintf(fd, sizeof fd, "%d", p[1]);
            close(p[0]);
            execl(agent, "am-bench", "forbid", path, fd, (char *)NULL);
            _exit(127);
        }
        close(p[1]);
        uint64_t t0 = 0;
        ssize_t got = read(p[0], &t0, sizeof t0);
        int st;
        waitpid(pid, &st, 0);
        uint64_t t1 = now_ns();
        close(p[0]);
        if (got == sizeof t0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
            killed++;
            sum += (double)(t1 - t0);
            printf("%s%llu", killed > 1 ? "," : "", (unsigned long long)(t1 - t0));
        } else {
            survived++;
        }
        unlink(path);
    }
    printf("\nkilled=%ld survived=%ld\n", killed, survived);
    return 0;
}

static int mode_forbid(const char *path, int fd) {
    uint64_t t0 = now_ns();
    if (write(fd, &t0, sizeof t0) != sizeof t0) return 3;
    int f = open(path, O_WRONLY | O_CREAT, 0644);
    if (f >= 0) close(f);
    return 0; /* still alive: the kill did not happen */
}

static long arg_n(int argc, char **argv, int i) {
    if (i >= argc) {
        fprintf(stderr, "load %s: missing argument %d (see xtask/bench/load.c)\n", argv[1], i);
        exit(2);
    }
    char *end;
    long v = strtol(argv[i], &end, 10);
    if (*end || v < 0) {
        fprintf(stderr, "load: not a number: %s\n", argv[i]);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: load MODE ARGS... (see xtask/bench/load.c)\n");
        return 2;
    }
    const char *mode = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "sleep")) {
        for (;;) pause();
    }
    if (!strcmp(mode, "forbid")) return mode_forbid(argv[2], (int)arg_n(argc, argv, 3));
    if (!strcmp(mode, "post")) return mode_post(arg_n(argc, argv, 2), (uint16_t)arg_n(argc, argv, 3), arg_n(argc, argv, 4));
    if (!strcmp(mode, "pace")) {
        if (argc < 6) { fprintf(stderr, "load pace RATE SECS THREADS PATH\n"); return 2; }
        return mode_pace((double)arg_n(argc, argv, 2), atof(argv[3]), arg_n(argc, argv, 4), argv[5]);
    }
    if (!strcmp(mode, "killtime")) {
        if (argc < 5) { fprintf(stderr, "load killtime N AGENT PATH\n"); return 2; }
        return mode_killtime(arg_n(argc, argv, 2), argv[3], argv[4]);
    }
    long n = arg_n(argc, argv, 2);
    if (n == 0) n = 1;
    uint64_t t0 = now_ns();
    long errors;
    if (!strcmp(mode, "open")) {
        if (argc < 4) { fprintf(stderr, "load open N PATH\n"); return 2; }
        errors = mode_open(n, argv[3]);
    } else if (!strcmp(mode, "write")) {
        if (argc < 4) { fprintf(stderr, "load write N PATH\n"); return 2; }
        errors = mode_write(n, argv[3], &t0);
    } else if (!strcmp(mode, "ssl")) {
        if (argc < 6) { fprintf(stderr, "load ssl N CERT KEY METHOD\n"); return 2; }
        errors = mode_ssl(n, argv[3], argv[4], argv[5], &t0);
    } else if (!strcmp(mode, "connect")) {
        errors = mode_connect(n, &t0);
    } else if (!strcmp(mode, "udp")) {
        errors = mode_udp(n, &t0);
    } else if (!strcmp(mode, "fork")) {
        errors = mode_fork(n, 0);
    } else if (!strcmp(mode, "exec")) {
        errors = mode_fork(n, 1);
    } else {
        fprintf(stderr, "load: unknown mode %s\n", mode);
        return 2;
    }
    report(t0, n, errors);
    return 0;
}
