"""Where a sweep's Optuna studies live: in memory inside Tune's saved searcher, or, with
`resources.optuna_storage`, in an Optuna RDB storage (PostgreSQL, SQLite) as `<sweep>:<target>`,
where optuna-dashboard and `optuna.load_study` read them; Tune's saved searcher holds the
storage, so a resumed sweep goes on in the same studies."""

from __future__ import annotations

from pgray.config.search_space import SearchSpace
from pgray.errors import ClusterError, PgrayError


def study_name(space: SearchSpace, target: str) -> str:
    """A target's Optuna study in `resources.optuna_storage`."""
    return f"{space.name}:{target}"


def optuna_storage(space: SearchSpace, targets: list[str]):
    """The RDB storage of `resources.optuna_storage` (None: in memory). A new sweep whose
    studies are there already is refused: it would add its trials to another sweep's (a
    sweep resumed with --resume continues its studies through Tune's saved searcher)."""
    url = space.resources.optuna_storage
    if url is None or not space.search:
        return None
    import optuna

    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's many errors, said in one line
        raise ClusterError(f"resources.optuna_storage {url}: cannot open it ({err})") from None
    there = set(optuna.study.get_all_study_names(storage))
    taken = [study_name(space, t) for t in targets if study_name(space, t) in there]
    if taken:
        raise PgrayError(f"resources.optuna_storage already holds the studies {taken}: pass"
                         " --resume to continue that sweep, rename this one, or delete them"
                         " (optuna delete-study --storage URL --study-name NAME)")
    return storage
