"""A real Azure Blob Storage emulator on loopback for tests: Azurite (npm `azurite`, installed into
.venv/node by scripts/setup.sh; POCADUCK_AZURITE names another azurite-blob executable)."""
import os
import socket
import subprocess
import time
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from s3server import free_port

REPO = Path(__file__).resolve().parents[2]
EXE = os.environ.get("POCADUCK_AZURITE", str(REPO / ".venv" / "node" / "node_modules" / ".bin" / "azurite-blob"))

# Azurite's well-known development account (the same in object_store's emulator mode).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """Starts azurite-blob (in memory) on a free port; `env` holds the variables that point
    object_store's emulator mode at it."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [EXE, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
             "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the npm shim runs node as a child: stop the whole group
        )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"azurite did not start ({EXE})")
                time.sleep(0.1)
        # object_store: AZURE_STORAGE_USE_EMULATOR takes the account and key above and the blob
        # URL from AZURITE_BLOB_STORAGE_URL (default http://127.0.0.1:10000).
        self.env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": self.endpoint}
        self.client = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.endpoint}/{ACCOUNT};"
        )

    def container(self, name: str) -> str:
        self.client.create_container(name)
        return name

    def keys(self, container: str, prefix: str) -> list[str]:
        return [b.name for b in self.client.get_container_client(container).list_blobs(name_starts_with=prefix)]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(10)


def enabled() -> bool:
    return os.environ.get("POCADUCK_TEST_AZURE") == "1"
