"""S3's requests for :mod:`refinery.awsclient`: the object operations the functions use.

``GetObject`` (conditional on the ETag; the body streamed as stored, ``Content-Encoding`` not undone),
``PutObject`` (with ``Content-MD5``, type, encoding and tags), ``GetObjectTagging`` and
``PutObjectTagging``, with botocore's parameter names and response keys, so callers take either
client. Objects are addressed virtual-hosted at AWS (path-style for a bucket name with dots) and
path-style at a configured endpoint; a bucket in another region than the client's is followed there
once S3 names it (``x-amz-bucket-region``), as botocore's redirector does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import requests

from .awsclient import AwsServiceError, Client, dns_suffix
from .sigv4 import encode_path

_VIRTUAL_HOSTABLE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def _xml_text(tag: str, text: str) -> str:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return _xml_unescape(found.group(1)) if found else ""


def _xml_unescape(text: str) -> str:
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        text = text.replace(entity, char)
    return text


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Body:
    """A ``get_object`` body: the response's bytes as sent (``Content-Encoding`` not undone)."""

    def __init__(self, response: requests.Response):
        self._response = response

    def read(self, amt: int | None = None) -> bytes:
        return bytes(self._response.raw.read(amt, decode_content=False))

    def close(self) -> None:
        self._response.close()


class S3Client(Client):
    """The S3 operations the functions use, with botocore's parameter names and response keys."""

    service = "s3"
    #: Buckets found in another region than the client's (S3 said so): their requests go there.
    bucket_regions: dict[str, str]

    def object_url(self, bucket: str, key: str, query: str = "", region: str | None = None) -> str:
        if not bucket or not key:
            raise ValueError(f"an S3 object needs a bucket and a key (got {bucket!r}, {key!r})")
        if any(segment in (".", "..") for segment in key.split("/")):
            raise ValueError(f"S3 key {key!r}: '.' and '..' path segments are not supported")
        tail = f"?{query}" if query else ""
        if self.endpoint_url:
            return f"{self.endpoint_url}/{bucket}/{encode_path(key)}{tail}"
        region = region or self.region
        suffix = dns_suffix(region)
        if _VIRTUAL_HOSTABLE.match(bucket):
            return f"https://{bucket}.s3.{region}.{suffix}/{encode_path(key)}{tail}"
        return f"https://s3.{region}.{suffix}/{bucket}/{encode_path(key)}{tail}"

    def _object(
        self,
        operation: str,
        bucket: str,
        key: str,
        method: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        query: str = "",
        stream: bool = False,
    ) -> requests.Response:
        """One object request; a bucket in another region (S3's 301 or 400 naming it in
        ``x-amz-bucket-region``, as botocore's redirector reads it) is asked again there, once."""
        regions = self.__dict__.setdefault("bucket_regions", {})
        region = regions.get(bucket, self.region)
        resource = f"s3://{bucket}/{key}"
        try:
            url = self.object_url(bucket, key, query, region)
            return self.send(operation, resource, method, url, headers, body, stream, region)
        except AwsServiceError as exc:
            if exc.status not in (301, 400) or not exc.region or exc.region == region:
                raise
            regions[bucket] = exc.region
            url = self.object_url(bucket, key, query, exc.region)
            return self.send(operation, resource, method, url, headers, body, stream, exc.region)

    def parse_error(self, text: str, headers: Mapping[str, str]) -> tuple[str, str]:
        return _xml_text("Code", text), _xml_text("Message", text)

    @staticmethod
    def _metadata(response: requests.Response) -> dict[str, Any]:
        return {"HTTPStatusCode": response.status_code, "HTTPHeaders": dict(response.headers)}

    def get_object(self, *, Bucket: str, Key: str, IfNoneMatch: str | None = None) -> dict[str, Any]:
        headers = {"If-None-Match": IfNoneMatch} if IfNoneMatch else {}
        response = self._object("GetObject", Bucket, Key, "GET", headers, stream=True)
        length = response.headers.get("Content-Length")
        return {
            "Body": _Body(response),
            "ETag": response.headers.get("ETag"),
            "ContentLength": int(length) if length is not None else None,
            "ContentType": response.headers.get("Content-Type"),
            "ContentEncoding": response.headers.get("Content-Encoding"),
            "ResponseMetadata": self._metadata(response),
        }

    def put_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Body: bytes,
        ContentType: str | None = None,
        ContentEncoding: str | None = None,
        Tagging: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(Body).digest()).decode()}
        for name, value in (
            ("Content-Type", ContentType),
            ("Content-Encoding", ContentEncoding),
            ("x-amz-tagging", Tagging),
        ):
            if value:
                headers[name] = value
        response = self._object("PutObject", Bucket, Key, "PUT", headers, bytes(Body))
        response.close()
        return {"ETag": response.headers.get("ETag"), "ResponseMetadata": self._metadata(response)}

    def get_object_tagging(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        response = self._object("GetObjectTagging", Bucket, Key, "GET", {}, query="tagging")
        tags = [
            {"Key": _xml_text("Key", tag), "Value": _xml_text("Value", tag)}
            for tag in re.findall(r"<Tag>(.*?)</Tag>", response.text, re.DOTALL)
        ]
        return {"TagSet": tags, "ResponseMetadata": self._metadata(response)}

    def put_object_tagging(self, *, Bucket: str, Key: str, Tagging: Mapping[str, Any]) -> dict[str, Any]:
        tags = "".join(
            f"<Tag><Key>{_xml_escape(t['Key'])}</Key><Value>{_xml_escape(t['Value'])}</Value></Tag>"
            for t in Tagging["TagSet"]
        )
        body = f'<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><TagSet>{tags}</TagSet></Tagging>'
        data = body.encode()
        headers = {
            "Content-Type": "application/xml",
            "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
        }
        response = self._object("PutObjectTagging", Bucket, Key, "PUT", headers, data, query="tagging")
        response.close()
        return {"ResponseMetadata": self._metadata(response)}
