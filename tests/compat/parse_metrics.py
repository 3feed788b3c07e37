#!/usr/bin/env python3
"""Parses an OpenMetrics exposition from stdin with the Prometheus project's own Python parser
(prometheus_client.openmetrics.parser, strict: it rejects anything the format does not allow) and
prints the families as JSON: {name: {"type": ..., "help": ..., "unit": ..., "samples": [[name,
labels, value], ...]}}. Exits 1 with the parser's error when the text is not valid OpenMetrics."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
try:
    families = {}
    for f in text_string_to_metric_families(text):
        families[f.name] = {
            "type": f.type,
            "help": f.documentation,
            "unit": f.unit,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
except Exception as e:  # the parser raises ValueError and friends
    print(f"not valid OpenMetrics: {e}", file=sys.stderr)
    sys.exit(1)
json.dump(families, sys.stdout)
