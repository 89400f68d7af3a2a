"""The methods: which heads exist and which loss terms train them, one name each (``method.name``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodSpec", "METHODS", "DEFERRED_REWEIGHT"]


@dataclass(frozen=True)
class MethodSpec:
    fbh: bool  # feature-balancing head (Sec. 2.1) adds lambda * L1
    cdh: bool  # class-division head (Sec. 2.2): K-way classifier with soft labels (Eq. 4)
    loss: str  # per-sample loss of the main classifier: ce | focal | ldam
    mixup: bool  # mixup data augmentation (Zhang et al. 2018)
    reweight: bool  # class re-weighting by effective number (Cui et al. 2019), from method.drw_epoch
    normed_classifier: bool = False  # cosine classifier (LDAM-DRW's NormedLinear)

    @property
    def two_head(self) -> bool:
        """A method of the two-head family (Table 4's FBH / CDH rows): they share one architecture."""
        return self.fbh or self.cdh


METHODS: dict[str, MethodSpec] = {
    "ce": MethodSpec(fbh=False, cdh=False, loss="ce", mixup=False, reweight=False),
    "focal": MethodSpec(fbh=False, cdh=False, loss="focal", mixup=False, reweight=False),
    # CB: CE re-weighted by the effective number from the first epoch (drw_epoch is ignored).
    "cb": MethodSpec(fbh=False, cdh=False, loss="ce", mixup=False, reweight=True),
    "cb_focal": MethodSpec(fbh=False, cdh=False, loss="focal", mixup=False, reweight=True),
    "ldam": MethodSpec(fbh=False, cdh=False, loss="ldam", mixup=False, reweight=False, normed_classifier=True),
    "ldam_drw": MethodSpec(fbh=False, cdh=False, loss="ldam", mixup=False, reweight=True, normed_classifier=True),
    "mixup": MethodSpec(fbh=False, cdh=False, loss="ce", mixup=True, reweight=False),
    # The paper's method ("Ours", Table 1) and its ablations (Table 4).
    "twohead": MethodSpec(fbh=True, cdh=True, loss="ce", mixup=False, reweight=False),
    "fbh_only": MethodSpec(fbh=True, cdh=False, loss="ce", mixup=False, reweight=False),
    "cdh_only": MethodSpec(fbh=False, cdh=True, loss="ce", mixup=False, reweight=False),
    # "Ours-Full" (Table 1, last row): two heads + mixup + class re-weighting "as used in MiSLAS".
    "twohead_full": MethodSpec(fbh=True, cdh=True, loss="ce", mixup=True, reweight=True),
}

# Methods whose re-weighting starts at method.drw_epoch (deferred re-weighting, LDAM-DRW);
# the others re-weight from the first epoch.
DEFERRED_REWEIGHT = {"ldam_drw", "twohead_full"}
