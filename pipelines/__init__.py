"""Beam batch jobs: KuaiSAR-format CSV logs -> TFRecords, vocabularies, tables and statistics."""
