"""Two torch processes sharing the cores, as `make test`'s two workers do: a small training
loop on 2 threads, timed alone or side by side. OpenMP's default wait policy lets a thread
that finished its share spin for a while, on a core the other process's threads wait for;
`OMP_WAIT_POLICY=PASSIVE` makes it sleep (tests/conftest.py sets it).

    python -m benchmarks.omp_wait                             # alone
    python -m benchmarks.omp_wait & python -m benchmarks.omp_wait; wait
    export OMP_WAIT_POLICY=PASSIVE; python -m benchmarks.omp_wait & python -m benchmarks.omp_wait; wait
"""

import time

import torch


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(16, 512)
    start = time.perf_counter()
    for _ in range(400):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"400 steps: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
