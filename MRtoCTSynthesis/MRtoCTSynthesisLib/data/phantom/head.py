"""The head phantom: scalp, skull with diploe, brain grey and white matter, ventricles, face and skull base."""

from __future__ import annotations

import numpy as np

from .shapes import (
    Anatomy,
    Bones,
    Paint,
    Points,
    Waves,
    rotation_matrix,
    sdf_capsule,
    sdf_ellipse2d,
    sdf_ellipsoid,
    sdf_sphere,
    smoothstep,
)
from .tissues import (
    AIR,
    CORTICAL,
    FAT,
    FLUID,
    GAS,
    GREY_MATTER,
    MUSCLE,
    ORGAN,
    TRABECULAR,
    WHITE_MATTER,
)


class HeadAnatomy(Anatomy):
    """Adult head: scalp fat, temporalis muscles, skull (outer/inner cortical tables with diploe),
    CSF, grey and white matter with sulci, lateral/third/fourth ventricles, cerebellum, brainstem,
    eyes with orbital fat and lenses, frontal/sphenoid/maxillary sinuses and nasal cavity (air),
    mastoid air cells, face and neck soft tissue with the cervical spine and airway.

    The anatomical origin is near the centre of the brain, slightly below the ventricles.
    """

    region = "head"

    def __init__(self, rng: np.random.Generator):
        self._init_frame(rng, max_rot=(5.0, 3.0, 5.0), max_shift=(5.0, 6.0, 6.0), defo_mm=3.0)
        u = rng.uniform
        self.skull_r = (u(66.0, 76.0), u(86.0, 98.0), u(78.0, 88.0))
        self.skull_c = (0.0, u(2.0, 8.0), u(-6.0, 2.0))
        self.skull_t = u(5.5, 8.5)
        self.table = u(1.6, 2.2)
        self.scalp = u(4.0, 8.0)
        self.csf = u(1.5, 3.5)
        self.gm = u(2.5, 3.5)
        self.vent = u(0.6, 1.5)            # ventricle size (atrophy)
        self.eye_r = u(11.0, 12.5)
        self.eye_sep = u(29.0, 34.0)
        self.face_fat = u(4.0, 10.0)
        self.sinus = u(0.7, 1.25)          # sinus pneumatisation
        self.gyri = Waves(rng, 10, 14.0, 28.0)
        self.tex_bone = Waves(rng, 8, 6.0, 20.0)
        self.tex_soft = Waves(rng, 8, 15.0, 60.0)
        self.mastoid = Waves(rng, 6, 5.0, 9.0)
        self._jitter_tables(
            rng,
            ct={AIR: -1000.0, FAT: -95.0, MUSCLE: 50.0, FLUID: 8.0, ORGAN: 40.0, TRABECULAR: 620.0,
                CORTICAL: 1550.0, GAS: -930.0, GREY_MATTER: 40.0, WHITE_MATTER: 28.0},
            t1={AIR: 0.0, FAT: 800.0, MUSCLE: 320.0, FLUID: 90.0, ORGAN: 380.0, TRABECULAR: 500.0,
                CORTICAL: 20.0, GAS: 0.0, GREY_MATTER: 420.0, WHITE_MATTER: 600.0},
            t2={AIR: 0.0, FAT: 520.0, MUSCLE: 170.0, FLUID: 950.0, ORGAN: 420.0, TRABECULAR: 320.0,
                CORTICAL: 15.0, GAS: 0.0, GREY_MATTER: 560.0, WHITE_MATTER: 400.0},
            ct_jit={FAT: 8.0, MUSCLE: 6.0, FLUID: 4.0, ORGAN: 4.0, TRABECULAR: 120.0, CORTICAL: 200.0, GAS: 40.0,
                    GREY_MATTER: 3.0, WHITE_MATTER: 3.0},
        )

    def _skull(self, p):
        return sdf_ellipsoid(p, self.skull_c, self.skull_r)

    def _face(self, p):
        c = self.skull_c
        face = sdf_ellipsoid(p, (0.0, c[1] - 50, c[2] - 55), (56.0, 55.0, 45.0))
        nose = sdf_capsule(p, (0.0, c[1] - 102, c[2] - 30), (0.0, c[1] - 108, c[2] - 62), 7.0, 13.0)[0]
        neck = np.maximum(sdf_ellipse2d(p.x, p.y - (c[1] + 12), 55.0, 58.0), p.z - (c[2] - 45))
        return np.minimum(np.minimum(face, nose), neck)

    def body(self, p: Points):
        return (self._skull(p) < self.scalp) | (self._face(p) < 0)

    def _skull_base(self, p):
        """Height (mm) of the top of the skull base under each point: high under the frontal lobes,
        lower in the middle fossa, lowest in the posterior fossa."""
        c = self.skull_c
        dy = p.y - c[1]
        return c[2] - 28 - 0.25 * dy - 15 * smoothstep((dy - 20) / 30.0)

    def paint(self, p: Points):
        n = len(p)
        c = self.skull_c
        paint = Paint(n, FAT)
        d_sk = self._skull(p)
        face = self._face(p)
        zb = self._skull_base(p)
        T = self.skull_t
        # face, neck and everything inside the head below the skull base: muscle/soft tissue under a
        # subcutaneous fat layer
        paint((face < -self.face_fat) & (d_sk > 0), MUSCLE)
        paint((d_sk < -self.face_fat) & (p.z < zb - 6), MUSCLE)
        for s in (-1, 1):  # temporalis
            tm = sdf_ellipsoid(p, (s * (self.skull_r[0] - 2), c[1] - 15, c[2] - 5), (9.0, 32.0, 30.0))
            paint((tm < 0) & (d_sk > 0), MUSCLE)
        # orbits: fat cone, eye globe (fluid), lens, optic nerve
        eyes = []
        for s in (-1, 1):
            ec = (s * self.eye_sep, c[1] - self.skull_r[1] + 22, c[2] - 30)
            eyes.append(ec)
            paint(sdf_ellipsoid(p, (ec[0] * 0.9, ec[1] + 18, ec[2]), (17.0, 28.0, 15.0)) < 0, FAT)
            paint(sdf_sphere(p, ec, self.eye_r) < 0, FLUID)
            paint(sdf_ellipsoid(p, (ec[0], ec[1] - self.eye_r + 3, ec[2]), (4.5, 2.0, 4.5)) < 0, ORGAN)
            paint(sdf_capsule(p, (ec[0], ec[1] + self.eye_r, ec[2]), (s * 12, ec[1] + 45, c[2] - 22), 2.5, 2.5)[0] < 0,
                  ORGAN)

        # intracranial space above the skull base: CSF, cortex (GM) with sulci over WM, deep GM,
        # ventricles, cerebellum below the tentorium, brainstem
        intra = (d_sk < -T) & (p.z > zb)
        paint(intra, FLUID)
        gyr = self.gyri(p.x, p.y, p.z)
        d_brain = np.maximum(d_sk + T + self.csf, zb + self.csf - p.z)
        brain = intra & (d_brain < 0)
        paint(brain, GREY_MATTER)
        wm = brain & (d_brain < -(self.gm + 2.0 + 2.5 * np.maximum(1.0 + gyr, 0.0)))
        paint(wm, WHITE_MATTER)
        paint(brain & (d_brain > -(self.gm + 2.5)) & (gyr > 0.9), FLUID)  # sulci
        for s in (-1, 1):  # basal ganglia / thalami
            paint(sdf_ellipsoid(p, (s * 17, c[1] - 2, c[2] + 4), (9.0, 20.0, 10.0)) < 0, GREY_MATTER, where=wm)
        tent = c[2] - 12 + 0.1 * (p.y - c[1])
        post_fossa = brain & (p.z < tent) & (p.y > c[1] + 5)
        paint(post_fossa, GREY_MATTER)
        for s in (-1, 1):
            paint(sdf_ellipsoid(p, (s * 20, c[1] + 50, c[2] - 32), (13.0, 15.0, 9.0)) < 0, WHITE_MATTER,
                  where=post_fossa)
        paint(sdf_capsule(p, (0.0, c[1] + 12, c[2] - 2), (0.0, c[1] + 22, c[2] - 110), 11.0, 7.0)[0] < 0,
              WHITE_MATTER, where=(p.z > c[2] - 48))
        v = self.vent
        for s in (-1, 1):
            rot = rotation_matrix(0, 0, s * 12)
            paint(sdf_ellipsoid(p, (s * 9 * (0.6 + 0.4 * v), c[1] - 2, c[2] + 14), (5.0 * v, 32.0, 9.0 * v), rot) < 0,
                  FLUID, where=intra)
            paint(sdf_capsule(p, (s * 12, c[1] + 20, c[2] + 14), (s * 24, c[1] + 40, c[2] - 8), 4.0 * v,
                              3.0 * v)[0] < 0,
                  FLUID, where=intra)
        paint(sdf_ellipsoid(p, (0.0, c[1] + 5, c[2] + 2), (2.0 * v, 14.0, 9.0)) < 0, FLUID, where=intra)
        paint(sdf_ellipsoid(p, (0.0, c[1] + 36, c[2] - 30), (6.0, 4.0, 6.0)) < 0, FLUID, where=intra)

        # skull: vault (outer and inner cortical tables around the diploe), frontal thickening, base plate
        bones = Bones(n)
        vault = np.maximum(np.maximum(d_sk, -T - d_sk), (zb - 6) - p.z)
        bones.add(vault, self.table)  # the shell's cortex on both faces = outer and inner tables
        frontal = sdf_ellipsoid(p, (0.0, c[1] - self.skull_r[1] + 10, c[2] + 8), (26.0, 11.0, 20.0))
        bones.add(np.maximum(frontal, d_sk), self.table)
        base = np.maximum(np.abs(p.z - (zb - 3)) - 3.0, d_sk)
        fm = sdf_ellipse2d(p.x, p.y - (c[1] + 28), 15.0, 18.0)  # foramen magnum
        bones.add(np.maximum(base, -fm), self.table)
        bones.add(sdf_ellipsoid(p, (0.0, c[1] - 20, c[2] - 40), (19.0, 18.0, 15.0)), 1.5)  # sphenoid body
        # face: maxilla and orbital walls
        bones.add(sdf_ellipsoid(p, (0.0, c[1] - 62, c[2] - 66), (42.0, 30.0, 20.0)), 2.0)
        for ec in eyes:
            orb = sdf_ellipsoid(p, (ec[0] * 0.9, ec[1] + 12, ec[2]), (19.0, 32.0, 17.0))
            bones.add(np.maximum(np.abs(orb) - 1.5, ec[1] - 4 - p.y), 1.0)
        # cervical spine below the skull base: bodies and posterior arches
        for k in range(4):
            zk = c[2] - 60 - 22 * k
            vb = np.maximum(sdf_ellipse2d(p.x, p.y - (c[1] + 2), 16.0, 11.0), np.abs(p.z - zk) - 7.0)
            bones.add(vb, 1.5)
            ring = np.maximum(sdf_ellipse2d(p.x, p.y - (c[1] + 24), 17.0, 15.0), np.abs(p.z - zk) - 5.0)
            ring = np.maximum(ring, -sdf_ellipse2d(p.x, p.y - (c[1] + 24), 10.0, 9.0))
            bones.add(np.maximum(ring, (c[1] + 14) - p.y), 1.5)
        bones.paint(paint)
        # spinal canal and cord below the foramen magnum
        below = p.z < zb - 6
        canal = sdf_ellipse2d(p.x, p.y - (c[1] + 24), 10.0, 9.0)
        paint((canal < 0) & below, FLUID)
        paint((canal < -3.5) & below, WHITE_MATTER)

        # air spaces: frontal, sphenoid and maxillary sinuses, nasal cavity, pharynx, mastoid cells;
        # where they cut bone a thin cortical wall is kept
        si = self.sinus
        air = [
            sdf_ellipsoid(p, (0.0, c[1] - self.skull_r[1] + 9, c[2] + 6), (16 * si, 5.0 * si, 12 * si)),
            sdf_ellipsoid(p, (0.0, c[1] - 20, c[2] - 40), (11 * si, 11 * si, 9 * si)),
            sdf_ellipsoid(p, (0.0, c[1] - 62, c[2] - 56), (9.0, 30.0, 19.0)),
            sdf_capsule(p, (0.0, c[1] - 26, c[2] - 62), (0.0, c[1] - 20, c[2] - 160), 8.0, 8.0)[0],
        ]
        for s in (-1, 1):
            air.append(sdf_ellipsoid(p, (s * 27, c[1] - 60, c[2] - 64), (15 * si, 17 * si, 14 * si)))
        for a_sdf in air:
            wall = (a_sdf < 1.5) & (a_sdf >= 0) & ((paint.lab == TRABECULAR) | (paint.lab == CORTICAL))
            paint(wall, CORTICAL)
            paint(a_sdf < 0, GAS, where=(d_sk < 0) | (face < 0))
        mt = self.mastoid(p.x, p.y, p.z)
        for s in (-1, 1):
            m = sdf_ellipsoid(p, (s * (self.skull_r[0] - 14), c[1] + 22, c[2] - 44), (10.0, 13.0, 10.0)) < 0
            paint(m, CORTICAL)
            paint(m & (mt > 0.2), GAS)

        bone_tex = self.tex_bone(p.x, p.y, p.z)
        soft_tex = self.tex_soft(p.x, p.y, p.z)
        self.info = dict(skull_thickness_mm=round(self.skull_t, 2), ventricle_scale=round(self.vent, 3),
                         sinus_scale=round(self.sinus, 3))
        return paint.lab, bone_tex, soft_tex

