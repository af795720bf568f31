/*
 * What a batched send would save the SFU's fan-out (issue 16, "sendmmsg for the fan-out
 * of one packet to N subscribers"): CPU time per 1,200-byte datagram sent to 8 loopback
 * receivers, one sendto() each against sendmmsg() in batches of BATCH. The receivers are
 * drained between rounds, outside the timed part; the timed part includes what the
 * kernel does for a loopback send (the receiver's delivery runs in the sender's context).
 *
 *   gcc -O2 -o /tmp/sendmmsg bench/sendmmsg.c
 *   unshare -n sh -c 'ip link set lo up && /tmp/sendmmsg 1 && /tmp/sendmmsg 32'
 *
 * Argument: 1 for sendto(), else the batch size for sendmmsg() (at most 64).
 * Not part of the product or of roundtable-bench: the figures are in docs/bench.md.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECEIVERS 8
#define PACKETS 400000
#define ROUND 32 /* datagrams per timed round: one read callback's fan-out */
#define SIZE 1200

static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int batch = argc > 1 ? atoi(argv[1]) : 1;
    if (batch < 1 || batch > 64 || ROUND % batch) {
        fprintf(stderr, "batch: 1 (sendto) or a divisor of %d up to 64\n", ROUND);
        return 2;
    }
    int rx[RECEIVERS];
    struct sockaddr_in to[RECEIVERS];
    for (int i = 0; i < RECEIVERS; i++) {
        rx[i] = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        int big = 16 << 20;
        setsockopt(rx[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        if (bind(rx[i], (void *)&a, sizeof a) < 0) {
            perror("bind");
            return 1;
        }
        socklen_t len = sizeof to[i];
        getsockname(rx[i], (void *)&to[i], &len);
    }
    int tx = socket(AF_INET, SOCK_DGRAM, 0);
    static char payload[ROUND][SIZE];
    memset(payload, 0x5a, sizeof payload);
    struct mmsghdr msgs[ROUND];
    struct iovec iovs[ROUND];
    char sink[2048];
    double timed = 0;
    long sent = 0, failed = 0;
    while (sent < PACKETS) {
        double t0 = cpu_seconds();
        if (batch == 1) {
            for (int k = 0; k < ROUND; k++)
                if (sendto(tx, payload[k], SIZE, MSG_DONTWAIT, (void *)&to[(sent + k) % RECEIVERS],
                           sizeof to[0]) < 0)
                    failed++;
        } else {
            for (int k = 0; k < ROUND; k++) {
                iovs[k] = (struct iovec){.iov_base = payload[k], .iov_len = SIZE};
                msgs[k] = (struct mmsghdr){0};
                msgs[k].msg_hdr.msg_iov = &iovs[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
                msgs[k].msg_hdr.msg_name = &to[(sent + k) % RECEIVERS];
                msgs[k].msg_hdr.msg_namelen = sizeof to[0];
            }
            for (int k = 0; k < ROUND; k += batch) {
                int n = sendmmsg(tx, &msgs[k], batch, MSG_DONTWAIT);
                if (n < batch)
                    failed += batch - (n < 0 ? 0 : n);
            }
        }
        timed += cpu_seconds() - t0;
        sent += ROUND;
        for (int i = 0; i < RECEIVERS; i++)
            while (recv(rx[i], sink, sizeof sink, MSG_DONTWAIT) > 0)
                ;
    }
    printf("%s: %.2f us of CPU per datagram sent (%ld sent, %ld failed)\n",
           batch == 1 ? "sendto" : "sendmmsg", timed / sent * 1e6, sent, failed);
    return 0;
}
