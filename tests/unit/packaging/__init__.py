"""Unit tests of the images' Dockerfiles and the repo's scripts."""
