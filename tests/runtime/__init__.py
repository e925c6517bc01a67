"""Tests of jobs/runtime: how the factory starts and quiets Ray, Spark and Airflow."""
