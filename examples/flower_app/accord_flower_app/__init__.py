"""A Flower app using Accord's strategy (see ../pyproject.toml)."""
