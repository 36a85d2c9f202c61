from setuptools import find_packages, setup

setup(
    name="nnunet_oar",
    version="0.1.0",
    description="nnU-Net v2 plugin: two-stage organ-at-risk localization and segmentation in CT "
                "(Navarro et al., 'A unified 3D framework for OAR localization and segmentation')",
    packages=find_packages(include=["nnunet_oar", "nnunet_oar.*"]),
    python_requires=">=3.10",
    install_requires=[
        "nnunetv2==2.8.1",
        "torch>=2.1",
        "SimpleITK>=2.2",
        "numpy",
        "scipy",
        "acvl-utils",
        "batchgenerators",
        "tqdm",
        "nibabel",            # NIfTI header checks (truncation, NaN) beside SimpleITK
        "matplotlib",
        "surface-distance",   # DeepMind's surface distances (HD95, NSD)
        "pydicom>=3",
        "highdicom",
        "scikit-image",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["nnunet_oar=nnunet_oar.cli:main"]},
)
