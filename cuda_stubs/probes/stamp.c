/* For the supervisor benchmark: prints CLOCK_MONOTONIC (ns) at its first instruction,
 * "start <ns>". With "crash" it then prints "exit <ns>" and exits with status 1; with
 * "once" it exits 0; otherwise it waits for a signal. CLOCK_MONOTONIC is the same clock
 * in every PID namespace, so the benchmark compares it with its own. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    long long start = now_ns();
    printf("start %lld\n", start);
    fflush(stdout);
    if (argc > 1 && !strcmp(argv[1], "crash")) {
        printf("exit %lld\n", now_ns());
        fflush(stdout);
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "once")) return 0;
    pause();
    return 0;
}
