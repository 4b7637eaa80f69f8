"""Tenant routing: which InfluxDB database (and retention policy) or bucket (and org) takes a point.

The routing table is YAML, bundled with the function (``ROUTES_FILE``) or in S3
(``ROUTES_BUCKET``/``ROUTES_KEY``), validated and kept fresh like the recording rules
(:mod:`refinery.watched`)::

    routes:
      - name: team-a                         # optional: shown by `refinery tap` and in messages
        match:                               # every condition must hold (no match: every point)
          org: team-a                        # org, space, app: names; org_guid, space_guid, app_guid
          space: {regex: "prod-.*"}          # a regular expression matching the whole value
        to: {database: team_a, retention_policy: four_weeks}
      - name: labelled orgs                  # the org's label gives the database: no redeploy
        to: {database: {org_label: metrics.example.com/database}}
      - match: {app_label: {metrics.example.com/tier: gold}}   # labels can be matched too
        to: {database: gold}
    default: {database: cf}                  # optional: the INFLUX_* settings' database/bucket

With the v2 API a destination is ``{bucket: …, org: …}`` (``org`` optional: ``INFLUX_ORG``).
The first route whose conditions hold *and* whose destination can be made (a label it takes its
value from is set) wins; otherwise the default. Labels are the values of the label keys the metadata
refresh keeps (``ROUTES_LABEL_KEYS``) for each org, space and app: CC v3's ``metadata.labels``.

A point's route is a pure function of the point's own tags and the app's metadata
(:func:`route`), so a retried, re-cut or replayed record is written to the same place (a replay uses
the metadata and table current then). :class:`Router` applies it in the sink: one dictionary look-up
per point, the route itself computed once per app GUID (and again after the snapshot or the table
changed). A point without an ``app_guid`` tag (a recording rule's aggregate, the pipeline's own
metrics) is routed by the tags it has, without labels.
"""

from __future__ import annotations

from .model import (
    DESTINATION_KEYS,
    LABEL_LEVELS,
    LABEL_SELECTORS,
    REQUIRED_KEY,
    ROUTE_KEYS,
    SUBJECT_FIELDS,
    TOP_KEYS,
    Destination,
    LabelRef,
    Pattern,
    Route,
    RoutesError,
    RoutesUnavailable,
    RoutingTable,
    Subject,
    route,
)
from .router import Router, build_router, default_destination, routing_book
from .table import parse_routes

__all__ = [
    "DESTINATION_KEYS",
    "LABEL_LEVELS",
    "LABEL_SELECTORS",
    "REQUIRED_KEY",
    "ROUTE_KEYS",
    "SUBJECT_FIELDS",
    "TOP_KEYS",
    "Destination",
    "LabelRef",
    "Pattern",
    "Route",
    "Router",
    "RoutesError",
    "RoutesUnavailable",
    "RoutingTable",
    "Subject",
    "build_router",
    "default_destination",
    "parse_routes",
    "route",
    "routing_book",
]
