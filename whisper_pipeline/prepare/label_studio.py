"""Straight from a Label Studio server: a project's labelling config and its full JSON export.

`--label-studio-url URL --project ID` (or LABEL_STUDIO_URL, with LABEL_STUDIO_API_KEY, from the
environment or `.env`). The export is a snapshot (`POST /api/projects/{id}/exports/`, then its download):
the export API meant for large projects. The key (a legacy token or a personal access token) goes in the
`Authorization` header only, to this server only (http.HttpAccess), and is never printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from whisper_pipeline.errors import ConfigError
from whisper_pipeline.prepare.http import HttpAccess, HttpError, origin, redact
from whisper_pipeline.prepare.sources import S3Settings, http_settings

SNAPSHOT_POLL_S = 0.5  # between looks at a snapshot being made
SNAPSHOT_TIMEOUT_S = 1800.0  # a snapshot not made by then is reported as failed
API_RESPONSE_BYTES = 64 * 2**20  # a project's config and a snapshot's status; the export has no bound
TOKEN_REFRESH_PATH = "/api/token/refresh/"  # personal access token -> access token (Label Studio >= 1.16)


@dataclass(frozen=True)
class LabelStudioSettings:
    url: str
    api_key: str = field(repr=False)

    @classmethod
    def from_env(cls, url: str | None, environ: Mapping[str, str]) -> LabelStudioSettings | None:
        """The server from --label-studio-url or LABEL_STUDIO_URL, its key from LABEL_STUDIO_API_KEY;
        None when no server is named."""
        url = (url or environ.get("LABEL_STUDIO_URL", "")).strip().rstrip("/")
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--label-studio-url {redact(url)}: expected http(s)://host[:port]")
        key = environ.get("LABEL_STUDIO_API_KEY", "").strip()
        if not key:
            raise ConfigError(
                f"LABEL_STUDIO_API_KEY is not set: copy the access token (or legacy token) of your account "
                f"at {redact(url)} (Account & Settings) into the environment or .env"
            )
        return cls(url, key)

    @property
    def token_refresh_url(self) -> str:
        return self.url + TOKEN_REFRESH_PATH


def server_http(
    server: LabelStudioSettings | None, s3: S3Settings, allowed_hosts: Sequence[str] = ()
) -> HttpAccess:
    """http(s) access with S3's CA bundle and timeouts, the server's key sent to the server only (a
    personal access token exchanged at the server for access tokens)."""
    return HttpAccess(
        http_settings(
            s3,
            allowed_hosts=tuple(host.strip().lower() for host in allowed_hosts if host.strip()),
            token=server.api_key if server else None,
            token_origin=origin(server.url) if server else None,
            token_refresh_url=server.token_refresh_url if server else None,
        )
    )


class LabelStudioClient:
    """The few API calls prepare needs, through the shared HttpAccess (retries, CA bundle, timeouts)."""

    def __init__(self, settings: LabelStudioSettings, http: HttpAccess) -> None:
        self.settings = settings
        self._http = http

    def project_name(self, project: int) -> str:
        return f"{redact(self.settings.url)}/projects/{project}"

    def label_config(self, project: int) -> str:
        """The project's labelling config (its XML)."""
        details = self._json(f"/api/projects/{project}", project)
        config = details.get("label_config") if isinstance(details, dict) else None
        if not isinstance(config, str):
            raise ConfigError(f"{self.project_name(project)}: the server gave no label_config")
        return config

    def export(self, project: int) -> bytes:
        """The project's full JSON export, through a snapshot."""
        created = self._json(f"/api/projects/{project}/exports/", project, body={"title": "whisper-pipeline"})
        snapshot = created.get("id") if isinstance(created, dict) else None
        if snapshot is None:
            raise ConfigError(f"{self.project_name(project)}: the server made no export snapshot")
        waited = 0.0
        while (status := created.get("status")) not in ("completed", "failed"):
            if waited > SNAPSHOT_TIMEOUT_S:
                raise ConfigError(f"{self.project_name(project)}: the export snapshot is still {status!r}")
            time.sleep(SNAPSHOT_POLL_S)
            waited += SNAPSHOT_POLL_S
            created = self._json(f"/api/projects/{project}/exports/{snapshot}", project)
        if status == "failed":
            raise ConfigError(f"{self.project_name(project)}: the server failed to make the export snapshot")
        path = f"/api/projects/{project}/exports/{snapshot}/download?exportType=JSON"
        return self._get(path, project, limit=2**62)

    def predictions(self, project: int) -> list[dict[str, Any]]:
        """Every prediction of the project (id, task, model_version, result, score)."""
        raw = self._get(f"/api/predictions?project={project}", project, limit=2**62)
        try:
            found = json.loads(raw)
        except ValueError:
            raise ConfigError(f"{self.project_name(project)}: the server's answer is not JSON") from None
        return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> int:
        """Post predictions ({task, model_version, score, result}) in one request; how many it created.
        The server checks each against the labelling config and leaves out, silently but for its log,
        those that do not fit."""
        created = self._json(f"/api/projects/{project}/import/predictions", project, body=predictions)
        return int(created.get("created", 0)) if isinstance(created, dict) else 0

    def delete_prediction(self, project: int, prediction: int) -> None:
        try:
            self._http.delete(f"{self.settings.url}/api/predictions/{prediction}")
        except HttpError as error:
            raise ConfigError(self._describe(error, project)) from None

    def _json(self, path: str, project: int, body: Any = None) -> Any:
        raw = self._get(path, project, body=body, limit=API_RESPONSE_BYTES)
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError(f"{self.project_name(project)}: the server's answer is not JSON") from None

    def _get(self, path: str, project: int, *, body: Any = None, limit: int) -> bytes:
        url = self.settings.url + path
        try:
            if body is None:
                return self._http.get(url, limit=limit)
            return self._http.post_json(url, body)
        except HttpError as error:
            raise ConfigError(self._describe(error, project)) from None

    def _describe(self, error: HttpError, project: int) -> str:
        server = redact(self.settings.url)
        if error.status == 401:
            return f"{server} rejected LABEL_STUDIO_API_KEY (401): check the key (Account & Settings)"
        if error.status == 403:
            return f"{server}: the account of LABEL_STUDIO_API_KEY may not read project {project} (403)"
        if error.status == 404:
            return f"{server} has no project {project} (404): check --project"
        if error.maybe_done:
            return (
                f"Label Studio at {server} did not answer ({error}): see in the project whether it was done "
                "before running the command again"
            )
        if error.status == 0 and error.transient:
            return f"cannot reach Label Studio at {server} ({error}): check --label-studio-url"
        return f"Label Studio at {server}: {error}"
