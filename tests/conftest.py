import contextlib
import os
from collections.abc import Iterator

import pytest
import torch

from trainer.contracts.ray_auth import use_token_auth_when_available
from trainer.precision import without_tf32

# Ray reads RAY_AUTH_MODE when it is imported: a client of a token cluster must say so first.
use_token_auth_when_available()

# The suite runs on 2-core CI machines: keep intra-op threads modest and deterministic.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(items):
    """A test that needs a Ray cluster (the session's head, directly or through a fixture) is
    marked ``ray``: ``pytest -m "not ray"`` is the fast loop."""
    for item in items:
        if "ray_head" in item.fixturenames:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


@pytest.fixture(params=["cpu", _CUDA])
def device(request) -> Iterator[torch.device]:
    """The device a test runs on: the CPU, and a CUDA GPU where there is one (that case is marked
    ``cuda``; ``bench.gpu_check`` runs ``pytest -m cuda`` on the GPU). TF32 is off on CUDA for the
    test's length: the tests compare with fp32 references, which TF32's 10-bit mantissa misses."""
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    with without_tf32():
        yield torch.device("cuda")


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One Ray head for the whole test session (starting one takes seconds), with its dashboard
    and job API on a free loopback port. Token authentication stays on, as Ray 2.60 sets it up."""
    from services.ray_head import free_port, start_head
    from tests.distributed import HEAD_CPUS

    head = start_head(
        tmp_path_factory.mktemp("ray-head"), dashboard_port=free_port(), num_cpus=HEAD_CPUS
    )
    yield head
    head.stop()


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This process connected to the session's Ray head as a driver."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    ray.init(address=ray_head.gcs_address, log_to_driver=False)
    yield ray
    ray.shutdown()


POSTGRES_URL = os.environ.get(
    "SIMCLR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_schema_url(schema: str) -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def postgres_schema(prefix: str = "simclr_test") -> Iterator[str]:
    """A schema of its own on the test PostgreSQL server, dropped after; yields its name (the
    test is skipped, saying so, only where no server answers)."""
    import uuid

    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        connection = engine.connect()
    except sqlalchemy.exc.OperationalError as error:
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_URL}: {error.orig}")
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        connection.commit()
    try:
        yield schema
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
            connection.commit()
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a schema of its own on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'simclr.db'}"
        return
    with postgres_schema() as schema:
        yield _postgres_schema_url(schema)


@pytest.fixture
def store(database_url):
    """The service's store over a fresh, migrated database."""
    from services.store.db import make_engine, migrate
    from services.store.store import Store

    engine = make_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def settings(ray_head, tmp_path):
    """Service settings on the session's Ray head, with a SQLite store in the test's directory."""
    from tests.services.test_service_ray import service_settings

    return service_settings(ray_head, tmp_path, f"sqlite:///{tmp_path / 'simclr.db'}")
