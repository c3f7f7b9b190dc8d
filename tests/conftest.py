import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny batched LAPACK calls are ~400x slower with 2 threads on these machines
    # (docs/pitfalls.md, "Threads"); tests run single-threaded.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config):
    # ``pytest -m "not slow"``: the fast inner loop; CI runs everything
    config.addinivalue_line("markers", "slow: takes over ~5 s on 2 CPU cores (deselect with "
                                       "-m 'not slow')")
