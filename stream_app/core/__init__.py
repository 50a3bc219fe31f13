"""The core: what every record means (events, customer state, segmentations, predictions,
routing, the step and the pipeline). It imports nothing of Kafka, Faust or the host
(import-linter contract "core", pyproject.toml)."""
