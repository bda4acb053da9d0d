"""tools/gpu_check: what can be checked without a GPU and without network
access. The completeness check of download_wheels.sh and the helper
wheelset.py run on folders of tiny fake wheels; the argument errors of both
scripts are checked; nothing is downloaded or installed."""
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools' / 'gpu_check'
DOWNLOAD = TOOLS / 'download_wheels.sh'
RUN = TOOLS / 'run_gpu_check.sh'
WHEELSET = TOOLS / 'wheelset.py'

# The projects the roots of download_wheels.sh name, as fake wheels:
# (name, version, Requires-Dist lines).
COMPLETE_SET = [
    ('mmengine', '0.10.7', [
        'addict', 'numpy', 'opencv-python>=3',
        'regex; sys_platform == "win32"', 'pytest; extra == "tests"'
    ]),
    ('mmdet', '3.3.0',
     ['numpy', 'pycocotools', 'mmcv<2.2.0,>=2.0.0rc4; extra == "mim"']),
    ('mmsegmentation', '1.2.2', ['numpy', 'packaging']),
    ('pycocotools', '2.0.11', ['numpy']),
    ('addict', '2.4.0', []),
    ('numpy', '2.5.5', []),
    ('opencv_python_headless', '5.0.0', ['numpy>=2']),
    ('packaging', '26.3', []),
    ('pillow', '13.0.0', []),
    ('pyyaml', '6.0.3', []),
    ('yapf', '0.43.0', ['tomli>=2.0.1; python_version < "3.11"']),
    ('ftfy', '6.3.1', []),
    ('regex', '2026.1.1', []),
    ('pytest', '9.2.0', ['packaging']),
    ('setuptools', '81.0.0', []),
    ('ninja', '1.13.2', []),
    ('wheel', '0.48.0', ['torch; extra == "x"']),
]


def make_wheel(folder: Path,
               name: str,
               version: str,
               requires=(),
               tag: str = 'py3-none-any') -> Path:
    """A wheel holding only its METADATA."""
    path = folder / f'{name}-{version}-{tag}.whl'
    metadata = [
        'Metadata-Version: 2.1', f'Name: {name}', f'Version: {version}'
    ]
    metadata += [f'Requires-Dist: {line}' for line in requires]
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr(f'{name}-{version}.dist-info/METADATA',
                         '\n'.join(metadata) + '\n')
    return path


def complete_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, version, requires in COMPLETE_SET:
        make_wheel(folder, name, version, requires)
    (folder / 'mmcv-2.1.0.tar.gz').write_bytes(b'')  # read by name only
    return folder


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, PIP_NO_INDEX='1')
    env.update(kwargs.pop('env', {}))
    return subprocess.run([str(a) for a in args],
                          capture_output=True,
                          text=True,
                          timeout=120,
                          env=env,
                          **kwargs)


def check(folder: Path, *options) -> subprocess.CompletedProcess:
    return run('bash', DOWNLOAD, '--check-only', '--dest', folder, *options)


def test_complete_set_passes(tmp_path):
    result = check(complete_folder(tmp_path / 'w'))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'complete: 18 files' in result.stdout
    # torch is only named under an extra: not even assumed
    assert 'torch' not in result.stdout


def test_missing_requirement_is_listed_with_its_requirer(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    (folder / 'pycocotools-2.0.11-py3-none-any.whl').unlink()
    (folder / 'ftfy-6.3.1-py3-none-any.whl').unlink()
    result = check(folder)
    assert result.returncode == 1
    assert 'missing: pycocotools (needed by mmdet 3.3.0)' in result.stdout
    assert 'missing: ftfy (needed by root list)' in result.stdout
    assert 'is incomplete' in result.stderr


def test_markers_are_evaluated_for_the_target_python(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    # yapf needs tomli on Python < 3.11 only, whatever runs the check
    result = check(folder, '--python', '3.10')
    assert result.returncode == 1
    assert re.search(r'missing: tomli>=2\.0\.1 \(needed by yapf 0\.43\.0\)',
                     result.stdout), result.stdout
    assert check(folder, '--python', '3.12').returncode == 0


def test_have_list_meets_requirements_and_conflicts_fail(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    (folder / 'numpy-2.5.5-py3-none-any.whl').unlink()
    have = tmp_path / 'have.txt'
    have.write_text('numpy==2.5.2\ntorch==2.11.0+cu130\n# a comment\n'
                    '-e git+https://example.invalid/x#egg=x\n')
    assert check(folder).returncode == 1
    result = check(folder, '--have', have)
    assert result.returncode == 0, result.stdout
    have.write_text('numpy==1.26.4\n')  # opencv needs numpy>=2
    result = check(folder, '--have', have)
    assert result.returncode == 1
    assert re.search(
        r'conflict: numpy: the target has numpy 1\.26\.4, but '
        r'.*opencv-python-headless 5\.0\.0.* needs numpy>=2',
        result.stdout), result.stdout


def test_old_or_new_setuptools_on_the_target_is_replaced(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    have = tmp_path / 'have.txt'
    have.write_text('setuptools==84.2.1\n')  # no pkg_resources
    result = check(folder, '--have', have)
    assert result.returncode == 0, result.stdout
    assert 'setuptools 84.2.1 on the target, replaced' in result.stdout
    have.write_text('setuptools\n')  # version unknown: kept as well
    result = check(folder, '--have', have)
    assert 'setuptools (version unknown) on the target, replaced' \
        in result.stdout
    (folder / 'setuptools-81.0.0-py3-none-any.whl').unlink()
    result = check(folder, '--have', have)
    assert result.returncode == 1
    assert 'missing: setuptools<82,>=77' in result.stdout
    have.write_text('setuptools==80.9.0\n')  # has pkg_resources
    assert check(folder, '--have', have).returncode == 0


def test_headless_opencv_meets_a_requirement_on_opencv_python(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    make_wheel(folder, 'opencv_python', '5.0.0')
    result = check(folder)
    assert result.returncode == 1
    assert 'one module, cv2' in result.stdout


def test_torch_is_assumed_and_never_kept(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    (folder / 'mmengine-0.10.7-py3-none-any.whl').unlink()
    make_wheel(folder, 'mmengine', '0.10.7', ['torch>=2', 'numpy'])
    result = check(folder)
    assert result.returncode == 0, result.stdout
    assert 'assumed on the target (never downloaded): torch' in result.stdout
    make_wheel(folder, 'torch', '2.11.0')
    result = check(folder)
    assert result.returncode == 1
    assert 'torch-2.11.0-py3-none-any.whl (the target provides torch' \
        in result.stdout


def test_wrong_python_duplicates_and_wrong_versions_fail(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    make_wheel(
        folder, 'pillow', '12.0.0', tag='cp311-cp311-manylinux_2_28_x86_64')
    make_wheel(folder, 'addict', '2.3.0')
    (folder / 'mmdet-3.3.0-py3-none-any.whl').unlink()
    make_wheel(folder, 'mmdet', '3.2.0', ['numpy', 'pycocotools'])
    result = check(folder)
    assert result.returncode == 1
    out = result.stdout
    assert 'pillow-12.0.0-cp311-cp311-manylinux_2_28_x86_64.whl (not built ' \
        'for this Python and platform)' in out
    assert 'two versions of one project: addict' in out
    assert 'mmdet-3.2.0-py3-none-any.whl (root list needs mmdet==3.3.0)' \
        in out
    assert 'missing: mmdet==3.3.0' in out


def test_resolve_plans_downloads_and_deletions(tmp_path):
    folder = complete_folder(tmp_path / 'w')
    (folder / 'pycocotools-2.0.11-py3-none-any.whl').unlink()
    make_wheel(folder, 'tzdata', '2026.6')  # needed by nothing
    have = tmp_path / 'have.txt'
    have.write_text('numpy\npytest==8.0.0\n')
    result = run(sys.executable, WHEELSET, 'resolve', '--dir', folder,
                 '--python', '3.12', '--platform', 'manylinux_2_28_x86_64',
                 '--have', have, '--root', 'mmdet==3.3.0', '--root', 'pytest')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'DOWNLOAD pycocotools\tfor mmdet 3.3.0' in lines
    deleted = {
        line.split('\t')[0].rsplit('/', 1)[-1]: line.split('\t')[1]
        for line in lines if line.startswith('DELETE ')
    }
    assert deleted['numpy-2.5.5-py3-none-any.whl'] == 'already on the target'
    assert deleted['pytest-9.2.0-py3-none-any.whl'] == 'already on the target'
    assert deleted['tzdata-2026.6-py3-none-any.whl'] == 'no longer needed'
    assert 'mmdet-3.3.0-py3-none-any.whl' not in deleted


def test_install_lists_only_missing_projects_for_this_python(tmp_path):
    folder = tmp_path / 'w'
    folder.mkdir()
    missing = make_wheel(folder, 'acmix_fake_missing_project', '1.0')
    make_wheel(folder, 'pytest', '0.0.1')  # installed here
    make_wheel(folder, 'torch', '0.0.1')  # never replaced
    make_wheel(
        folder,
        'acmix_fake_other_python',
        '1.0',
        tag='cp27-cp27mu-manylinux1_x86_64')
    mmcv = make_wheel(folder, 'mmcv', '2.1.0')  # installed separately
    result = run(sys.executable, WHEELSET, 'install', '--dir', folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(missing)]
    assert 'pytest' in result.stderr and 'is installed' in result.stderr
    assert "never replaces the target's own torch" in result.stderr
    assert 'not for this Python/platform' in result.stderr
    result = run(sys.executable, WHEELSET, 'mmcv', '--dir', folder)
    assert result.returncode == 0 and result.stdout.strip() == str(mmcv)
    mmcv.unlink()
    assert run(sys.executable, WHEELSET, 'mmcv', '--dir',
               folder).returncode == 1


@pytest.mark.parametrize('args,message', [
    (['--bogus'], "unknown argument '--bogus'"),
    (['--python', '3'], "--python wants a version such as 3.12, got '3'"),
    (['--python'], '--python needs a value'),
    (['--have', '/nonexistent/have.txt'], "does not exist"),
    (['--check-only', '--dest', '/nonexistent/wheels'], 'does not exist'),
])
def test_download_argument_errors(args, message):
    result = run('bash', DOWNLOAD, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith('download_wheels.sh: error:')


def test_download_help_describes_the_options():
    result = run('bash', DOWNLOAD, '--help')
    assert result.returncode == 0
    for option in ('--python', '--platform', '--dest', '--have',
                   '--check-only'):
        assert option in result.stdout


@pytest.mark.parametrize('args,message', [
    ([], 'usage: run_gpu_check.sh WHEEL_DIR OUT_DIR'),
    (['only-one'], 'usage: run_gpu_check.sh WHEEL_DIR OUT_DIR'),
    (['{tmp}/no-such-folder', '{tmp}/out'
      ], "WHEEL_DIR '{tmp}/no-such-folder' is not a folder"),
    (['{tmp}', '{tmp}/out', '--budget', '5'
      ], "--budget wants whole seconds, at least 60, got '5'"),
    (['{tmp}', '{tmp}/out', '--frobnicate'], "unknown option '--frobnicate'"),
])
def test_run_script_refuses_bad_arguments(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    result = run('bash', RUN, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message.format(tmp=tmp_path) in result.stderr
    assert not (tmp_path / 'out').exists()  # refused before doing anything


def test_run_script_needs_a_python_with_torch(tmp_path):
    result = run(
        'bash',
        RUN,
        tmp_path,
        tmp_path / 'out',
        env=dict(PYTHON='python-that-does-not-exist'))
    assert result.returncode == 2
    assert "no Python 'python-that-does-not-exist'" in result.stderr


def test_run_script_refuses_a_python_without_torch(tmp_path):
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\nexit 1\n')  # every import fails
    fake.chmod(0o755)
    result = run(
        'bash', RUN, tmp_path, tmp_path / 'out', env=dict(PYTHON=str(fake)))
    assert result.returncode == 2
    assert f'{fake} cannot import torch' in result.stderr
    assert not (tmp_path / 'out').exists()


def test_roots_cover_the_project_dependencies():
    """Each requirement of pyproject.toml (and its test extra) is a root of
    download_wheels.sh, except torch and Triton, which the GPU machine has."""
    tomllib = pytest.importorskip('tomllib')
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
    wanted = list(project['dependencies'])
    wanted += project['optional-dependencies']['test']
    text = DOWNLOAD.read_text()
    block = text[text.index('roots=('):]
    block = block[:block.index('\n)\n')]
    roots = {
        re.split(r'[<>=!~ ;\[]', r, 1)[0].lower().replace('_', '-')
        for r in re.findall(r'"([^"]+)"', block)
    }
    for requirement in wanted:
        name = re.split(r'[<>=!~ ;\[]', requirement, 1)[0].lower()
        if name not in ('torch', 'triton'):
            assert name.replace('_', '-') in roots, requirement


def test_profile_layer_needs_a_gpu():
    result = subprocess.run(
        [sys.executable, str(TOOLS / 'profile_layer.py')],
        capture_output=True,
        text=True,
        env={
            **os.environ, 'CUDA_VISIBLE_DEVICES': ''
        })
    assert result.returncode == 2
    assert 'needs a CUDA GPU' in result.stderr


def ncu_rows(index, kernel, metrics):
    """ncu --csv rows of one kernel launch."""
    return [
        f'"{index}","1","python3","host","{kernel}","1","7","(32, 1, 1)",'
        f'"(8, 1, 1)","0","9.0","Command line profiler metrics","{name}","",'
        f'"{value}"' for name, value in metrics.items()
    ]


def test_profile_layer_tabulates_ncu_counters():
    sys.path.insert(0, str(TOOLS))
    try:
        import profile_layer
    finally:
        sys.path.remove(str(TOOLS))
    header = ('"ID","Process ID","Process Name","Host Name","Kernel Name",'
              '"Context","Stream","Block Size","Grid Size","Device","CC",'
              '"Section Name","Metric Name","Metric Unit","Metric Value"')
    metrics = dict.fromkeys(profile_layer.METRICS, '1')
    first = dict(
        metrics, **{
            'gpu__time_duration.sum': '147,264',
            'smsp__inst_executed.sum': '4,000'
        })
    report = '\n'.join([
        '==PROF== Connected to process 1',
        f'{profile_layer.TAG} coco/stage1 1000 slot_forward,slot_grad_query',
        '==PROF== Disconnected from process 1', header,
        *ncu_rows(0, '_slot_forward_kernel', first),
        *ncu_rows(1, '_slot_grad_query_kernel', metrics)
    ])
    table = profile_layer.counters_table(report)
    assert table[1].startswith(
        'coco/stage1 _slot_forward_kernel 147.3 | 128.0')
    assert table[2].startswith('coco/stage1 _slot_grad_query_kernel 0.0 | 0.0')
    with pytest.raises(
            SystemExit, match='reported 2 kernels, the run '
            'launched 3'):
        profile_layer.counters_table(
            report.replace('slot_grad_query\n',
                           'slot_grad_query,slot_grad_key_value\n'))
