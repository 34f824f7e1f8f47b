"""Span exporters (store, JSONL), OTLP decoding and the ``atlas-collector`` OTLP receiver."""

from atlas_middleware.otel_exporters.sdk import JsonlSpanExporter, StoreSpanExporter

__all__ = ["JsonlSpanExporter", "StoreSpanExporter"]
