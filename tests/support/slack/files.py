"""File uploads as slack_sdk's ``files_upload_v2`` makes them: get an upload URL, POST the bytes there,
complete the upload (shared into a channel the bot is in, or nowhere, for an image block to show)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.support.slack.core import StandInCore
from tests.support.slack.records import (
    Channel,
    Message,
    Rejection,
    SlackError,
    UploadedFile,
)


class Files(StandInCore):
    """files.getUploadURLExternal, the upload itself, files.completeUploadExternal."""

    def add_channel(self, channel_id: str, name: str, bot_member: bool = True) -> None:
        """A conversation the workspace has (the bot in it, or not)."""
        with self._cond:
            self.channels[channel_id] = Channel(name, bot_member)

    def _files_get_upload_url_external(self, params: dict[str, Any]) -> dict[str, Any]:
        """files.getUploadURLExternal: needs a filename and the length in bytes of what will be uploaded."""
        filename = str(params.get("filename") or "")
        length = str(params.get("length") or "")
        if not filename or not length.isdigit() or int(length) < 1:
            raise SlackError("invalid_arguments")
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        key = uuid.uuid4().hex
        token = self.bot_token  # _check_token let only the bot token through
        self.files[file_id] = UploadedFile(file_id, filename, int(length), token, params.get("alt_txt"))
        self._upload_keys[key] = file_id
        return {"upload_url": f"http://127.0.0.1:{self.port}/upload/v1/{key}", "file_id": file_id}

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        """The POST of the bytes to the upload URL: the length must be the one announced."""
        data = await request.read()
        with self._cond:
            file_id = self._upload_keys.get(request.match_info["key"])
            upload = self.files.get(file_id or "")
            if upload is None:
                return web.Response(status=404, text="not_found")
            if len(data) != upload.length:
                self.rejections.append(Rejection("upload", {"error": "length mismatch", "declared": upload.length,
                                                            "received": len(data)}, {"file_id": upload.id}))
                return web.Response(status=400, text="length_mismatch")
            upload.content = data
            self._cond.notify_all()
        return web.Response(status=200, text=f"OK - {len(data)}")

    def _files_complete_upload_external(self, params: dict[str, Any]) -> dict[str, Any]:
        """files.completeUploadExternal: known, uploaded files; a channel that exists with the bot in it."""
        files = params.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) and f.get("id") for f in files):
            raise SlackError("invalid_arguments")
        uploads = [self.files.get(str(f["id"])) for f in files]
        if any(u is None or u.content is None or u.completed for u in uploads):
            raise SlackError("file_not_found")
        channel = params.get("channel_id") or None
        targets = [channel] if channel else [c for c in str(params.get("channels") or "").split(",") if c]
        for target in targets:
            if target not in self.channels:
                raise SlackError("channel_not_found")
            if not self.channels[target].bot_member:
                raise SlackError("not_in_channel")
        shared = []
        for spec, upload in zip(files, uploads, strict=True):
            assert upload is not None
            upload.title, upload.completed, upload.channels = spec.get("title") or upload.filename, True, tuple(targets)
            shared.append(self._file_object(upload))
        for target in targets:
            self._messages.append(Message(target, self._next_ts(), params.get("initial_comment") or "", None,
                                          thread_ts=params.get("thread_ts") or None, user=self.bot_user_id,
                                          bot_id=self.bot_id, files=shared))
        return {"files": shared}

    def _file_object(self, upload: UploadedFile) -> dict[str, Any]:
        """The file object Slack answers with (the fields clients read)."""
        return {"id": upload.id, "name": upload.filename, "title": upload.title, "size": upload.length,
                "mimetype": "image/png" if upload.is_image else "application/octet-stream",
                "channels": list(upload.channels), "is_public": bool(upload.channels), "user": self.bot_user_id,
                "url_private": f"https://files.slack.test/files-pri/{self.team_id}-{upload.id}/{upload.filename}",
                "permalink": f"https://{self.team_domain}.slack.test/files/{self.bot_user_id}/{upload.id}"}

    def uploaded(self, predicate: Callable[[UploadedFile], bool] | None = None) -> list[UploadedFile]:
        """Completed uploads (matching ``predicate``), oldest first."""
        with self._cond:
            return [f for f in self.files.values() if f.completed and (predicate is None or predicate(f))]
