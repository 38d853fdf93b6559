"""Start-up cost of the package and the command line, against Python's own start-up.

    python benchmarks/startup.py [--repeats 5]

Each command runs in a fresh interpreter, ``--repeats`` times, interleaved; the table gives
the median wall time and its ratio to ``python -c pass`` measured in the same run, and the
reference ``python -c "import torch"`` (what any command that computes must pay).
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "import pyro_vae": [sys.executable, "-c", "import pyro_vae"],
    "pyro-vae --help": [sys.executable, "-m", "pyro_vae.cli", "--help"],
    "pyro-vae list": [sys.executable, "-m", "pyro_vae.cli", "list"],
    "import torch (reference)": [sys.executable, "-c", "import torch"],
}


def wall_seconds(command):
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    times = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall_seconds(command))
    base = statistics.median(times["python -c pass (reference)"])
    print(f"{'command':<30} {'median s':>9} {'min s':>7} {'x python':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<30} {median:>9.3f} {min(values):>7.3f} {median / base:>9.1f}")
    return times


if __name__ == "__main__":
    main()
