"""Files a user names: a weights checkpoint."""
from __future__ import annotations





def check_weights_file(path) -> None:
    """A checkpoint path must name a regular, non-empty file (not a folder, a device, a pipe).

    Raises:
        WeightsError: saying which of these it is.
    """
    import stat
    from pathlib import Path

    from ..errors import WeightsError

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {p}") from None
    except OSError as e:
        raise WeightsError(f"cannot read the weights file {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"--weights {p} is a folder; give the checkpoint file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(f"--weights {p} is not a regular file (a device, pipe or socket); give a checkpoint file")
    if st.st_size == 0:
        raise WeightsError(f"--weights {p} is empty (0 bytes); give a checkpoint file")
