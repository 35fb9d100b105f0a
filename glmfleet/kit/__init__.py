"""The box kit (files/ rendered from settings) and the index pattern: pure, shared by stages."""
