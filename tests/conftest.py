"""Shared pytest configuration: plugins every test folder can use."""

pytest_plugins = ["tests.devcluster_plugin"]
