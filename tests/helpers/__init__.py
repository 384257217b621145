"""What several test modules share and is not a fixture for all: toy banks, stores, servers, the repo's path."""
