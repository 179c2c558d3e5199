"""Celery workers: the gpu and cpu queues."""
