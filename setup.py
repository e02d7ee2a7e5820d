from setuptools import find_packages, setup

setup(
    name='mmdet-ela',
    version='0.3.12',
    description='Efficient Layer Attention (ELA) for MMDetection 3.x',
    packages=find_packages(include=['mmdet_ela', 'mmdet_ela.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch', 'mmengine>=0.10.7,<1.0', 'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.3.0,<3.4', 'scipy', 'pycocotools'
    ],
    extras_require={
        'tests': ['pytest'],
        'plots': ['matplotlib']
    },
)
