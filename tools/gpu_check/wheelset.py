"""Helper of download_wheels.sh and run_gpu_check.sh: reads a folder of
wheels (and source tarballs) and answers, without any network access:

    resolve  what to download so that every requirement is met: prints
             ``DOWNLOAD <requirement>`` and ``DELETE <file>`` lines
    check    whether the folder is complete; exit status 1 listing what is
             missing, conflicting, duplicated or built for another target
    list     the files with their sizes and the total
    install  (run by the target's Python) the wheels whose project is not
             installed in it yet, one path a line
    mmcv     (run by the target's Python) the mmcv wheel for this Python

``resolve`` and ``check`` take the target as options (--python 3.12
--platform TAG ...), the requirements to start from (--root REQ ...) and
what the target already has (--have FILE, a ``pip list --format=freeze``;
bare names count as installed in any version). A requirement is met by a
wheel or source tarball in the folder, or by the --have list. torch, Triton
and nvidia-* packages are never downloaded: the target provides them.
Requirements that apply only to an extra, or whose markers exclude the
target, are left out. Runs on Python 3.8+ with ``packaging`` or, failing
that, the copy inside pip.
"""
import argparse
import email.parser
import importlib.metadata
import os
import re
import sys
import zipfile
from typing import Dict, Iterable, List, Optional, Set, Tuple

try:
    from packaging import tags as _tags
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import (canonicalize_name, parse_sdist_filename,
                                 parse_wheel_filename)
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - a Python without packaging
    from pip._vendor.packaging import tags as _tags
    from pip._vendor.packaging.requirements import (InvalidRequirement,
                                                    Requirement)
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import (canonicalize_name,
                                             parse_sdist_filename,
                                             parse_wheel_filename)
    from pip._vendor.packaging.version import InvalidVersion, Version

SDIST_SUFFIXES = ('.tar.gz', '.zip')
# Projects that install the same module: a requirement on one is met by any
# (mmengine's wheel asks for opencv-python, mmcv's build picks the headless
# one when that is installed; both installed overwrite each other's cv2).
SAME_MODULE = [('opencv-python', 'opencv-python-headless',
                'opencv-contrib-python', 'opencv-contrib-python-headless')]

# Build tools that the GPU check installs over the target's own when these
# do not meet the requirements (setuptools >= 82 has no pkg_resources, which
# mmcv's setup.py and mmengine import).
REPLACEABLE = ('setuptools', )


def alternatives(name: str) -> Tuple[str, ...]:
    for group in SAME_MODULE:
        if name in group:
            return group
    return (name, )


def provided_by_target(name: str) -> bool:
    """torch, Triton and CUDA's packages come with the target's torch."""
    name = canonicalize_name(name)
    return name in ('torch', 'triton', 'pytorch-triton') or \
        name.startswith('nvidia-')


class Dist:
    """One file of the folder: a wheel or a source tarball."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = os.path.basename(path)
        self.is_wheel = self.file.endswith('.whl')
        if self.is_wheel:
            name, version, _, self.tags = parse_wheel_filename(self.file)
        else:
            name, version = parse_sdist_filename(self.file)
            self.tags = frozenset()
        self.name = canonicalize_name(name)
        self.version = version
        self._requires: Optional[List[str]] = None

    def requires(self) -> List[str]:
        """Requires-Dist of a wheel; [] for a source tarball (whose
        requirements the caller lists as roots)."""
        if self._requires is None:
            self._requires = []
            if self.is_wheel:
                with zipfile.ZipFile(self.path) as archive:
                    names = [
                        n for n in archive.namelist()
                        if re.fullmatch(r'[^/]+\.dist-info/METADATA', n)
                    ]
                    if len(names) != 1:
                        raise SystemExit(f'error: {self.file} has no single '
                                         '*.dist-info/METADATA')
                    text = archive.read(names[0]).decode('utf-8')
                message = email.parser.Parser().parsestr(
                    text, headersonly=True)
                self._requires = message.get_all('Requires-Dist') or []
        return self._requires


def folder_dists(folder: str) -> List[Dist]:
    files = sorted(os.listdir(folder))
    return [
        Dist(os.path.join(folder, f)) for f in files
        if f.endswith('.whl') or f.endswith(SDIST_SUFFIXES)
    ]


def read_have(path: Optional[str]) -> Dict[str, Optional[Version]]:
    """name -> version (None: any) from a ``pip list --format=freeze`` or
    ``pip freeze`` file; also accepts bare names, one a line."""
    have: Dict[str, Optional[Version]] = {}
    if not path:
        return have
    with open(path, encoding='utf-8') as file:
        for number, raw in enumerate(file, 1):
            line = raw.split('#', 1)[0].strip()
            if not line or line.startswith('-'):
                continue  # comments, -e / --find-links lines
            match = re.fullmatch(
                r'([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*'
                r'(?:===?\s*(\S+)|@\s*\S.*)?', line)
            if not match:
                raise SystemExit(f'error: {path}:{number}: cannot read '
                                 f'{line!r}; expected NAME==VERSION or NAME')
            version = None
            if match.group(2):
                try:
                    version = Version(match.group(2))
                except InvalidVersion:
                    version = None
            have[canonicalize_name(match.group(1))] = version
    return have


class Target:
    """The Python version and platform tags that the wheels are for."""

    def __init__(self, python: str, platforms: List[str]) -> None:
        parts = python.split('.')
        if len(parts) < 2 or not all(p.isdigit() for p in parts):
            raise SystemExit(f'error: --python wants X.Y such as 3.12, got '
                             f'{python!r}')
        self.version = (int(parts[0]), int(parts[1]))
        full = python if len(parts) > 2 else f'{python}.0'
        self.platforms = platforms
        machine = platforms[0].split('_', 1)[-1] if platforms else ''
        for arch in ('x86_64', 'aarch64', 'arm64', 'ppc64le', 's390x', 'i686',
                     'amd64'):
            if platforms and platforms[0].endswith(arch):
                machine = arch
        first = platforms[0] if platforms else 'linux'
        if first.startswith('win'):
            system, sys_platform, os_name = 'Windows', 'win32', 'nt'
            machine = {'amd64': 'AMD64'}.get(machine, machine)
        elif first.startswith('macosx'):
            system, sys_platform, os_name = 'Darwin', 'darwin', 'posix'
        else:
            system, sys_platform, os_name = 'Linux', 'linux', 'posix'
        self.environment = dict(
            python_version=f'{self.version[0]}.{self.version[1]}',
            python_full_version=full,
            implementation_name='cpython',
            implementation_version=full,
            os_name=os_name,
            platform_machine=machine,
            platform_python_implementation='CPython',
            platform_release='',
            platform_system=system,
            platform_version='',
            sys_platform=sys_platform,
            extra='')
        interpreter = f'cp{self.version[0]}{self.version[1]}'
        self.supported = set(
            _tags.cpython_tags(self.version, platforms=platforms))
        self.supported.update(
            _tags.compatible_tags(
                self.version, interpreter=interpreter, platforms=platforms))

    def applies(self, requirement: Requirement, extras: Iterable[str]) -> bool:
        if requirement.marker is None:
            return True
        return any(
            requirement.marker.evaluate(dict(self.environment, extra=extra))
            for extra in [''] + sorted(extras))

    def compatible(self, dist: Dist) -> bool:
        return not dist.is_wheel or bool(dist.tags & self.supported)


class Report:
    """What a folder lacks for a target."""

    def __init__(self) -> None:
        self.missing: Dict[str, Tuple[SpecifierSet, Set[str]]] = {}
        self.stale: List[Tuple[Dist, str]] = []  # to delete
        self.conflicts: List[str] = []
        self.duplicates: List[str] = []
        self.provided: Set[str] = set()  # torch & co, assumed
        self.left_out: List[Dist] = []  # on the target already
        self.unneeded: List[Dist] = []  # required by nothing
        self.replaced: List[str] = []  # REPLACEABLE, too old


def parse_requirement(text: str, origin: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as error:
        raise SystemExit(f'error: bad requirement {text!r} of {origin}: '
                         f'{error}')


def analyse(dists: List[Dist], roots: List[str],
            have: Dict[str, Optional[Version]], target: Target) -> Report:
    """Requirements of the roots and, transitively, of the wheels in the
    folder, checked against the folder and the --have list."""
    report = Report()
    by_name: Dict[str, List[Dist]] = {}
    for dist in dists:
        if provided_by_target(dist.name):
            report.stale.append((dist, 'the target provides '
                                 f'{dist.name} itself'))
        elif not target.compatible(dist):
            report.stale.append((dist, 'not built for this Python and '
                                 'platform'))
        else:
            by_name.setdefault(dist.name, []).append(dist)
    for name, group in by_name.items():
        if len(group) > 1:
            report.duplicates.append(f'{name}: ' + ', '.join(d.file
                                                             for d in group))
    for names in SAME_MODULE:
        group = [d for n in names for d in by_name.get(n, [])]
        if len({d.name for d in group}) > 1:
            report.duplicates.append('one module, cv2: ' +
                                     ', '.join(d.file for d in group))

    # What the target has is not kept (so as not to shadow it); a
    # REPLACEABLE project is decided below, once its requirements are known.
    for name in list(by_name):
        if name not in REPLACEABLE and any(
                n in have for n in alternatives(name)):
            report.left_out.extend(by_name.pop(name))

    # Specifiers and requesters of each name; requested extras of each name.
    wanted: Dict[str, Tuple[SpecifierSet, Set[str]]] = {}
    extras: Dict[str, Set[str]] = {}
    seen: Set[Tuple[str, str]] = set()
    queue = [(parse_requirement(r, 'the root list'), 'root list')
             for r in roots]
    done: Set[Tuple[str, frozenset]] = set()
    while queue:
        requirement, origin = queue.pop(0)
        name = canonicalize_name(requirement.name)
        key = (str(requirement), origin)
        if key in seen:
            continue
        seen.add(key)
        specifier, origins = wanted.setdefault(name, (SpecifierSet(), set()))
        wanted[name] = (specifier & requirement.specifier, origins | {origin})
        extras.setdefault(name, set()).update(requirement.extras)
        # Follow the requirements of what the folder holds for ``name``
        # (the version that meets the requirements so far, if any).
        group = [d for n in alternatives(name) for d in by_name.get(n, [])]
        group = [
            d for d in group
            if wanted[name][0].contains(d.version, prereleases=True)
        ] or group
        for dist in group[:1]:
            state = (name, frozenset(extras[name]))
            if state in done:
                continue
            done.add(state)
            for text in dist.requires():
                child = parse_requirement(text, dist.file)
                if target.applies(child, extras[name]):
                    queue.append((child, f'{dist.name} {dist.version}'))

    # A REPLACEABLE project on the target in a version that does not do, or
    # in an unknown one, is kept in the folder (run_gpu_check.sh installs it
    # only where it is needed); in one that does, it is left out.
    replaced = set()
    for name in REPLACEABLE:
        if name not in have:
            continue
        version = have[name]
        if name in wanted and (version is None or not wanted[name][0].contains(
                version, prereleases=True)):
            replaced.add(name)
        else:
            report.left_out.extend(by_name.pop(name, []))
    needed = {n for name in wanted for n in alternatives(name)}
    report.unneeded = [
        d for group in by_name.values() for d in group if d.name not in needed
    ]
    for name, (specifier, origins) in sorted(wanted.items()):
        origin_text = ', '.join(sorted(origins))
        if provided_by_target(name):
            report.provided.add(name)
            continue
        if name in replaced:
            report.replaced.append(
                f'{name} {have[name] or "(version unknown)"} on the target, '
                f'replaced by {name}{specifier} for {origin_text} where it '
                'does not do')
        on_target = [
            n for n in alternatives(name) if n in have and n not in replaced
        ]
        if on_target:
            version = have[on_target[0]]
            if version is not None and not specifier.contains(
                    version, prereleases=True):
                report.conflicts.append(
                    f'{name}: the target has {on_target[0]} {version}, but '
                    f'{origin_text} needs {name}{specifier}')
            continue
        group = [d for n in alternatives(name) for d in by_name.get(n, [])]
        good = [
            d for d in group
            if specifier.contains(d.version, prereleases=True)
        ]
        for dist in group:
            if dist not in good:
                report.stale.append(
                    (dist, f'{origin_text} needs {name}{specifier}'))
        if not good:
            report.missing[name] = (specifier, origins)
    return report


def target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--dir', required=True)
    parser.add_argument('--python', default='3.12')
    parser.add_argument('--platform', action='append', default=[])
    parser.add_argument('--have')
    parser.add_argument('--root', action='append', default=[])


def command_resolve(args: argparse.Namespace) -> int:
    target = Target(args.python, args.platform)
    report = analyse(
        folder_dists(args.dir), args.root, read_have(args.have), target)
    for dist in report.left_out:
        print(f'DELETE {dist.path}\talready on the target')
    for dist, reason in report.stale:
        print(f'DELETE {dist.path}\t{reason}')
    for dist in report.unneeded:
        print(f'DELETE {dist.path}\tno longer needed')
    for name, (specifier, origins) in sorted(report.missing.items()):
        print(f'DOWNLOAD {name}{specifier}\tfor {", ".join(sorted(origins))}')
    return 0


def command_check(args: argparse.Namespace) -> int:
    target = Target(args.python, args.platform)
    dists = folder_dists(args.dir)
    report = analyse(dists, args.root, read_have(args.have), target)
    problems = []
    for name, (specifier, origins) in sorted(report.missing.items()):
        problems.append(f'missing: {name}{specifier} '
                        f'(needed by {", ".join(sorted(origins))})')
    problems += [
        f'wrong version or target: {d.file} ({why})' for d, why in report.stale
    ]
    problems += [f'conflict: {text}' for text in report.conflicts]
    problems += [
        f'two versions of one project: {text}' for text in report.duplicates
    ]
    if report.unneeded:
        print('not needed (harmless): ' + ', '.join(d.file
                                                    for d in report.unneeded))
    for text in report.replaced:
        print(f'note: {text}')
    if report.provided:
        print('assumed on the target (never downloaded): ' +
              ', '.join(sorted(report.provided)))
    if problems:
        print(f'INCOMPLETE: {args.dir} for Python {args.python} lacks:')
        for line in problems:
            print(f'  {line}')
        return 1
    print(f'complete: {len(dists)} files in {args.dir} meet every '
          f'requirement of the roots for Python {args.python}' +
          (' with the packages of --have' if args.have else ''))
    return 0


def human_size(size: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if size < 1024 or unit == 'GiB':
            return f'{size:.1f} {unit}' if unit != 'B' else f'{size} B'
        size /= 1024
    return ''


def command_list(args: argparse.Namespace) -> int:
    dists = folder_dists(args.dir)
    total = 0
    for dist in dists:
        size = os.path.getsize(dist.path)
        total += size
        print(f'{human_size(size):>10}  {dist.file}')
    print(f'{human_size(total):>10}  total, {len(dists)} files in {args.dir}')
    return 0


def running_target() -> Set[object]:
    return set(_tags.sys_tags())


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def setuptools_usable() -> bool:
    """mmcv's setup.py and mmengine need pkg_resources (setuptools < 82)."""
    try:
        import pkg_resources  # noqa: F401
    except Exception:
        return False
    return True


def command_install(args: argparse.Namespace) -> int:
    """Wheels of the folder for this interpreter whose project is missing
    here; reasons for the others go to stderr."""
    supported = running_target()
    for dist in folder_dists(args.dir):
        if not dist.is_wheel or dist.name == 'mmcv':
            continue
        if provided_by_target(dist.name):
            print(
                f'  skip {dist.file}: never replaces the target\'s own '
                f'{dist.name}',
                file=sys.stderr)
            continue
        if not dist.tags & supported:
            print(
                f'  skip {dist.file}: not for this Python/platform',
                file=sys.stderr)
            continue
        here = [(n, installed_version(n)) for n in alternatives(dist.name)]
        here = [(n, v) for n, v in here if v is not None]
        if here and not (dist.name == 'setuptools'
                         and not setuptools_usable()):
            print(
                f'  skip {dist.file}: {here[0][0]} {here[0][1]} is '
                'installed',
                file=sys.stderr)
            continue
        print(dist.path)
    return 0


def command_mmcv(args: argparse.Namespace) -> int:
    supported = running_target()
    for dist in folder_dists(args.dir):
        if dist.name == 'mmcv' and dist.is_wheel and dist.tags & supported:
            print(dist.path)
            return 0
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    for name in ('resolve', 'check'):
        target_options(commands.add_parser(name))
    for name in ('list', 'install', 'mmcv'):
        commands.add_parser(name).add_argument('--dir', required=True)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dir):
        raise SystemExit(f'error: {args.dir} is not a folder')
    return dict(
        resolve=command_resolve,
        check=command_check,
        list=command_list,
        install=command_install,
        mmcv=command_mmcv)[args.command](
            args)


if __name__ == '__main__':
    sys.exit(main())
