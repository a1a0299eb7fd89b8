"""pyskim on 2 threads against pyskim on 1 thread while other processes keep cores busy: dense AlexNet
conv1-5 forward through the Net, the two thread counts in their own processes, interleaved in rounds.

    python benchmarks/busy_neighbour.py [--busy 1] [--batches 1 16] [--rounds 5] [--repeats 5]
                                        [--threads 1 2] [--layers conv1 ...]

``--busy N`` starts N processes that spin in a Python loop for the whole run (0: an idle machine);
they are ordinary processes at the default priority, like another user's job. Two pyskim children
(bench_common's pyskim worker of dense_layers.py, ``net.forward()`` of a one-Convolution Net) run with
``--threads`` A and B; per layer and batch, round r times A then B (median of ``--repeats`` calls each),
then round r + 1. Printed: the median times and the per-round ratio time(A) / time(B) (> 1: B threads
are faster) with its median, per layer and for conv1-5 summed per round, and the load average.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys

import bench_common as bench
from dense_layers import PyskimConv

SERVERS = {"pyskim": PyskimConv}


def start_busy(n):
    """``n`` processes spinning in a Python loop (ended by :func:`stop_busy`)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_busy(processes):
    for p in processes:
        p.kill()
        p.wait()


def measure(args):
    a, b = args.threads
    workers = {t: bench.Worker(__file__, "pyskim", t, bench.pyskim_environment(t)) for t in (a, b)}
    busy = start_busy(args.busy)
    try:
        print(f"busy processes: {args.busy}; {bench.load_average_text()}")
        for worker in workers.values():
            print("  " + worker.call("info"))
        print(f"{'layer':6s} {'batch':>5s} {f'{a} thr ms':>10s} {f'{b} thr ms':>10s}  "
              f"{f'time({a})/time({b}) per round (median first)':>44s}")
        for batch in args.batches:
            sums = {t: [0.0] * args.rounds for t in (a, b)}
            for name in args.layers:
                for worker in workers.values():
                    worker.call("setup", name=name, batch=batch)
                seconds = bench.interleaved_rounds(
                    {t: (lambda w=w: w.call("time", method="conv", repeats=args.repeats)) for t, w in workers.items()},
                    args.rounds)
                print(f"{name:6s} {batch:5d} {statistics.median(seconds[a]) * 1e3:10.3f} "
                      f"{statistics.median(seconds[b]) * 1e3:10.3f}  {bench.ratio_text(seconds[a], seconds[b]):>44s}",
                      flush=True)
                sums = {t: [x + y for x, y in zip(sums[t], seconds[t])] for t in (a, b)}
            print(f"{'+'.join(args.layers)} batch {batch}: {a} threads {statistics.median(sums[a]) * 1e3:.2f} ms, "
                  f"{b} threads {statistics.median(sums[b]) * 1e3:.2f} ms; time({a})/time({b}) "
                  f"{bench.ratio_text(sums[a], sums[b])}", flush=True)
    finally:
        stop_busy(busy)
        for worker in workers.values():
            worker.close()
    print(f"done; {bench.load_average_text()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="spinning processes beside pyskim")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs=2, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", nargs="+", default=[c[0] for c in bench.ALEXNET_CONVS],
                        choices=[c[0] for c in bench.ALEXNET_CONVS])
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}")
    measure(args)


if __name__ == "__main__":
    bench.serve_if_worker(SERVERS)
    main()
