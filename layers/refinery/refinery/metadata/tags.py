"""An app's enrichment tags (app, org and space names and GUIDs) as the points carry them, escaped
once per app: the metadata store caches them, :mod:`refinery.convert` and the compiled fast path put
them around each point's own tags."""

from __future__ import annotations

from dataclasses import dataclass

from ..lineproto import tag_pair
from .snapshot import AppInfo


@dataclass(frozen=True, slots=True)
class AppTags:
    """The enrichment tags of one app, escaped once: ``head`` sorts before ``instance``, ``tail`` after."""

    head: str
    tail: str

    @classmethod
    def from_info(cls, info: AppInfo) -> AppTags:
        head = tag_pair("app", info.name) + tag_pair("app_guid", info.guid)
        tail = (
            tag_pair("org", info.org_name)
            + tag_pair("org_guid", info.org_guid)
            + tag_pair("space", info.space_name)
            + tag_pair("space_guid", info.space_guid)
        )
        return cls(head, tail)
