"""Packaging for monai_disc: a MONAI extension for mask-conditioned synthesis of prostate histology."""

from __future__ import annotations

from setuptools import find_packages, setup

# Ranges a user's GPU machine can satisfy; the README installs the torch/torchvision pair on this disk.
INSTALL_REQUIRES = [
    "torch>=2.4",
    "torchvision>=0.19",
    "monai>=1.4,<1.7",
    "einops>=0.7",  # MONAI's DiffusionModelUNet imports it; MONAI lists it as optional
    "pytorch-ignite>=0.4.11",
    "numpy>=1.24",
    "pandas>=2.0",
    "openpyxl>=3.1",
    "Pillow>=10.1",  # ImageFont.load_default(size=...): readable text on pictures
    "tifffile>=2023.7",
    "openslide-python>=1.3",
    "openslide-bin>=4.0",
    "scipy>=1.10",
    "tensorboard>=2.14",
    "timm>=0.9",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "pyyaml>=6.0",
    "fire>=0.5",  # python -m monai.bundle
    "diffusers>=0.30",  # DPM-Solver++ and UniPC (MONAI does not ship them); schedulers only, nothing downloaded
]

EXTRAS_REQUIRE = {
    # nystrom-attention: the reference the project's own (scriptable) Nystrom attention is tested against
    "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "ruff>=0.5", "mkdocs>=1.5", "nystrom-attention>=0.0.11"],
    # the set that starts monailabel 0.8.5: pydicom 3 lacks pydicom._storage_sopclass_uids (MONAILabel #1841)
    # scikit-image (the app's polygons), fastapi, anyio, pydantic (its routes): monailabel brings them too
    "monailabel": [
        "monailabel==0.8.5",
        "pydicom==2.4.5",
        "pynetdicom==2.1.1",
        "dicomweb-client==0.59.1",
        "scikit-image>=0.21",
        "fastapi",
        "anyio",
        "pydantic>=2",
    ],
}

setup(
    name="monai_disc",
    version="0.1.0",
    description="Mask-conditioned latent diffusion (SD, SD-SC, SD-DISC) for Gleason grading, on MONAI",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["monai_disc", "monai_disc.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["monai-disc=monai_disc.apps.cli:main"]},
)
