"""vdsmconsole: a console server for hypervisor hosts."""

from setuptools import find_packages, setup

setup(
    name="vdsmconsole",
    version="0.1.0",
    description=(
        "Guest serial consoles and VDSM-style XML-RPC on one "
        "mutually-authenticated TLS port"
    ),
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["vdsmconsole", "vdsmconsole.*"])
    + ["twisted.plugins"],
    package_data={"vdsmconsole": ["py.typed", "server/web/static/*"]},
    install_requires=[
        "twisted[tls,http2]>=23.10",
        "pyopenssl>=23.2",
        "service-identity>=23.1",
        "treq>=23.11",
        "cryptography>=41",
        "defusedxml>=0.7",
        # Websockets (server/websockets/): see docs/architecture.rst for why.
        "autobahn>=24.4",
        # /metrics: the exposition formats and the process collector
        # (Debian: python3-prometheus-client).
        "prometheus-client>=0.16",
    ],
    extras_require={
        # [libvirt] uri: discovery (builds against libvirt's headers, Debian's
        # libvirt-dev; or use Debian's python3-libvirt with the system Python).
        "libvirt": ["libvirt-python>=9.0"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "ruff>=0.5",
            "mypy>=1.10",
            "websockets>=14",
            "selenium>=4.20",
            # vncdo: the acceptance tests capture a guest's screen through a
            # tunnel (it brings Pillow, which reads the PNG back).
            "vncdotool>=1.2",
            # tests/test_libvirt.py runs discovery against test:///default.
            "libvirt-python>=9.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "vdsmconsole = vdsmconsole.cli:main",
            "vdsmconsole-client = vdsmconsole.client.cli.main:main",
            "vdsmconsole-demoguest = vdsmconsole.demoguest:main",
        ],
    },
)
