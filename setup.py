"""terrafuse: a TFX pipeline that classifies terrain from multispectral imagery and LiDAR."""
from setuptools import find_packages, setup

setup(
    name="terrafuse",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10,<3.11",
    # The product's packages; bench/ and tests/ are harnesses run from the checkout (`make bench`, `make test`).
    packages=find_packages(include=["foundation*", "transforms*", "schemas*", "models*", "components*", "synth*",
                                    "pipeline*"]),
    package_data={"schemas": ["*.pbtxt"]},
    entry_points={"console_scripts": ["terrafuse=pipeline.cli:main"]},
)
