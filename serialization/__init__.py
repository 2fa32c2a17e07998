"""Serializers: irregular data -> packed sequences (``Serialization``)."""
