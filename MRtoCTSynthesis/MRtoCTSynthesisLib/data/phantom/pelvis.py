"""The pelvis phantom: body outline, fat, muscles, pelvic bones with cortex and marrow, femoral heads, sacrum and
lower lumbar spine, bladder, rectum, bowel loops with gas, and sex organs."""

from __future__ import annotations

import math

import numpy as np

from .shapes import (
    Anatomy,
    Bones,
    Paint,
    Points,
    Waves,
    f32,
    rotation_matrix,
    sdf_capsule,
    sdf_ellipse2d,
    sdf_ellipsoid,
    sdf_sphere,
    smoothstep,
)
from .tissues import AIR, CORTICAL, FAT, FLUID, GAS, MUSCLE, ORGAN, TRABECULAR


class PelvisAnatomy(Anatomy):
    """Adult pelvis: body outline with subcutaneous fat, muscle, pelvic cavity with visceral fat,
    bladder, rectum/sigmoid and small-bowel loops with gas, prostate+seminal vesicles or
    uterus+ovaries, iliac vessels, and the bony pelvis (ilia, acetabula, pubis, ischia, sacrum, lower
    lumbar vertebrae, femoral heads/necks/trochanters/shafts) with cortical shells.

    The anatomical origin is near the centre of the pelvis; ``hz`` is the height of the femoral head
    centres (about 25 mm below the origin), and most heights below are relative to it (``zr``).
    """

    region = "pelvis"

    def __init__(self, rng: np.random.Generator):
        self._init_frame(rng)
        u = rng.uniform
        g = u(0.0, 1.0)                       # adiposity
        self.adiposity = g
        self.a_lean = u(145.0, 163.0)         # muscle half-width at hip level
        self.b_lean = u(90.0, 110.0)          # muscle half-depth
        self.t_lat = 6 + 18 * g + u(-2, 2)    # subcutaneous fat thickness (mm)
        self.t_ant = 8 + 32 * g + u(-3, 3)
        self.t_post = 8 + 22 * g + u(-3, 3)
        self.n_body = u(2.3, 2.9)             # superellipse exponent
        self.hz = u(-32.0, -20.0)             # femoral head centre height
        self.hx = self.a_lean - 70 + u(-4, 4)
        self.hy = -0.1 * self.b_lean + u(-5, 5)
        self.rh = u(21.0, 25.5)
        self.asym = u(-1.5, 1.5)
        self.crest = u(85.0, 100.0)           # iliac crest height above hz
        self.zr_tip = u(-36.0, -26.0)         # coccyx tip
        self.zr_top = u(68.0, 82.0)           # sacral promontory
        self.zr_floor = -28.0 + u(-4, 4)      # pelvic floor
        self.sex = "male" if u() < 0.5 else "female"
        self.bladder_fill = u(0.15, 1.0)
        self.prostate_scale = u(0.9, 1.4)
        self.uterus_scale = u(0.8, 1.2)
        self.anteversion = u(20.0, 55.0)
        self.r_rect = u(13.0, 19.0)
        self.x_rect = u(-6.0, 6.0)
        self.zr_sig = u(35.0, 55.0)
        self.rect_gas = u(0.0, 0.6)
        self.rect_gas_phase = u(0, 2 * np.pi)
        self.sig_pts = [(u(25, 45), u(-45, -25), u(15, 25)), (u(45, 70), u(-30, -5), u(40, 55)),
                        (u(55, 75), u(0, 25), u(85, 100))]
        # free gas bubbles along the colon
        self.n_bubbles = int(rng.integers(0, 5))
        self.bubbles = [(u(0, 1), u(3.0, 7.0)) for _ in range(self.n_bubbles)]
        # small-bowel loops in the false pelvis
        self.loops = []
        for _ in range(int(rng.integers(3, 8))):
            pts = [np.array([u(-55, 55), u(-60, 0), u(20, 90)])]
            for _ in range(3):
                step = rng.normal(size=3)
                step /= np.linalg.norm(step)
                pts.append(pts[-1] + step * u(25, 45))
            self.loops.append(dict(pts=pts, r=u(9.0, 14.0), fluid=u() < 0.5,
                                   gas=(u(0.25, 0.6) if u() < 0.45 else 0.0)))
        # intermuscular fat
        self.fat_blobs = []
        for _ in range(int(rng.integers(6, 12))):
            s = 1 if u() < 0.5 else -1
            self.fat_blobs.append(((s * u(40, 130), u(10, 100), u(-70, 90)),
                                   (u(4, 9), u(4, 9), u(15, 40)), rotation_matrix(u(-30, 30), u(-30, 30), u(-60, 60))))
        self.tex_bone = Waves(rng, 8, 8.0, 30.0)
        self.tex_soft = Waves(rng, 8, 15.0, 60.0)
        self._jitter_tables(
            rng,
            ct={AIR: -1000.0, FAT: -100.0, MUSCLE: 50.0, FLUID: 8.0, ORGAN: 38.0, TRABECULAR: 320.0,
                CORTICAL: 1250.0, GAS: -900.0},
            t1={AIR: 0.0, FAT: 820.0, MUSCLE: 330.0, FLUID: 90.0, ORGAN: 400.0, TRABECULAR: 560.0,
                CORTICAL: 25.0, GAS: 0.0},
            t2={AIR: 0.0, FAT: 560.0, MUSCLE: 170.0, FLUID: 920.0, ORGAN: 430.0, TRABECULAR: 330.0,
                CORTICAL: 18.0, GAS: 0.0},
            ct_jit={FAT: 10.0, MUSCLE: 7.0, FLUID: 6.0, ORGAN: 5.0, TRABECULAR: 70.0, CORTICAL: 200.0, GAS: 50.0},
        )

    # --- outline -------------------------------------------------------------------------------------
    def _lean(self, zr):
        a = self.a_lean * np.maximum(1 - 0.10 * ((zr + 15) / 110) ** 2, 0.6)
        b_ant = self.b_lean * (1 + 0.03 * zr / 100)
        b_post = self.b_lean * (1 + 0.10 * np.exp(-((zr + 25) / 40) ** 2))
        return a, b_ant, b_post

    def _superellipse_in(self, p, a, b_ant, b_post):
        by = np.where(p.y < 0, b_ant, b_post)
        n = self.n_body
        return (np.abs(p.x) / a) ** n + (np.abs(p.y) / by) ** n <= 1.0

    def body(self, p: Points):
        zr = p.z - f32(self.hz)
        a, b_ant, b_post = self._lean(zr)
        bp = b_post + self.t_post
        inside = self._superellipse_in(p, a + self.t_lat, b_ant + self.t_ant, bp)
        # gluteal cleft below the coccyx
        cd = smoothstep((self.zr_tip - 5 - zr) / 30.0) * 0.3 * bp
        cleft = (cd > 1.0) & (p.y > bp - cd) & (np.abs(p.x) < 1.5 + 0.3 * (p.y - (bp - cd)))
        return inside & ~cleft

    # --- sacrum / spine helpers ----------------------------------------------------------------------
    def _sacrum(self, zr):
        t = np.clip((zr - self.zr_tip) / (self.zr_top - self.zr_tip), 0.0, 1.0)
        _, _, b_post = self._lean(zr)
        w = 10 + 45 * t ** 0.9
        d = 7 + 13 * t
        yc = b_post - 25 - d - 32 * t
        return t, w, d, yc

    def _y_spine(self, zr):
        yc1 = self._sacrum(np.float32(self.zr_top))[3]
        return yc1 - 2 - 0.15 * (zr - self.zr_top)

    # --- painting ------------------------------------------------------------------------------------
    def paint(self, p: Points):
        n = len(p)
        zr = p.z - f32(self.hz)
        a, b_ant, b_post = self._lean(zr)
        paint = Paint(n, FAT)
        inner = self._superellipse_in(p, a, b_ant, b_post)
        paint(inner, MUSCLE)

        for c, r, rot in self.fat_blobs:
            paint(sdf_ellipsoid(p, (c[0], c[1], c[2] + self.hz), r, rot) < 0, FAT, where=paint.lab == MUSCLE)

        hx, hy, hz, rh = self.hx, self.hy, self.hz, self.rh
        t_s, w_s, d_s, yc_s = self._sacrum(zr)
        y_sym = -self.b_lean * (1 + 0.03 * -10 / 100) + 16
        y_v = self._y_spine(zr)

        # pelvic cavity (visceral fat): true pelvis below, false pelvis between the iliac wings above
        w = smoothstep((zr - 15) / 35.0)
        cx_t = hx - rh - 16
        ex_il = (hx - 12 - 20) + (0.86 * self.a_lean - 10 - hx) * smoothstep(zr / 90.0)
        cx_f = 20 + 0.85 * ex_il - 18
        cx = cx_t + (cx_f - cx_t) * w
        below_tip = zr < self.zr_tip
        y_p_t = np.where(below_tip, b_post - 40, yc_s - d_s - 2)
        y_a = (y_sym + 10) + ((-b_ant + 14) - (y_sym + 10)) * w
        y_p = y_p_t + ((y_v - 17 - 6) - y_p_t) * w
        cy, hy_c = 0.5 * (y_a + y_p), np.maximum(0.5 * (y_p - y_a), 5.0)
        cavity = ((np.abs(p.x) / cx) ** 2.5 + (np.abs(p.y - cy) / hy_c) ** 2.5 <= 1.0) & \
                 (zr > self.zr_floor + 12 * (p.x / cx) ** 2) & inner
        paint(cavity, FAT)

        # iliopsoas (muscle) on both sides
        for s in (-1, 1):
            top = (s * 32, float(self._y_spine(np.float32(self.zr_top + 100))) + 5, hz + self.zr_top + 110)
            mid = (s * (hx - 5), hy - rh - 8, hz - 10)
            low = (s * (hx - 10), hy - rh - 5, hz - 70)
            paint(sdf_capsule(p, top, mid, 22.0, 14.0)[0] < 0, MUSCLE, where=inner)
            paint(sdf_capsule(p, mid, low, 14.0, 16.0)[0] < 0, MUSCLE, where=inner)

        # small-bowel loops (restricted to the cavity), then colon
        gas_pockets = 0
        bl_scale = self.bladder_fill ** (1 / 3)
        bl_r = (44 * bl_scale, 34 * bl_scale, 32 * bl_scale)
        bl_c = (0.0, y_sym + 10 + bl_r[1], hz - 12 + 0.9 * bl_r[2])
        bl_top = bl_c[2] + bl_r[2]
        for loop in self.loops:
            pts = [pt + np.array([0.0, 0.0, bl_top]) for pt in loop["pts"]]
            r = loop["r"]
            for a_pt, b_pt in zip(pts[:-1], pts[1:]):
                sdf, ax_y = sdf_capsule(p, a_pt, b_pt, r, r)
                tube = (sdf < 0) & cavity
                lumen = (sdf < -2.5) & cavity
                paint(tube, ORGAN)
                paint(lumen, FLUID if loop["fluid"] else ORGAN)
                if loop["gas"] > 0:
                    rl = r - 2.5
                    paint(lumen & ((p.y - ax_y) < -rl + 2 * rl * loop["gas"]), GAS)
            gas_pockets += loop["gas"] > 0

        # rectum: a tube in front of the sacrum, narrowing to the anal canal below the coccyx tip
        rr = self.r_rect
        y_rect = np.where(below_tip, float(self._sacrum(np.float32(self.zr_tip))[3]) - 7 - 10 - rr,
                          yc_s - d_s - rr - 5)
        r_z = np.where(below_tip, rr - (rr - 8) * smoothstep((self.zr_tip - zr) / 25.0), rr)
        dxy = np.sqrt((p.x - self.x_rect) ** 2 + (p.y - y_rect) ** 2)
        in_z = (zr > self.zr_tip - 45) & (zr < self.zr_sig)
        rect = (dxy < r_z) & in_z & inner
        rect_lumen = (dxy < r_z - 4) & in_z & inner & (zr > self.zr_tip - 15)
        paint(rect, ORGAN)
        gf = self.rect_gas * np.clip(0.5 + 0.8 * np.sin(zr / 17.0 + self.rect_gas_phase), 0, 1)
        rl = r_z - 4
        paint(rect_lumen & ((p.y - y_rect) < -rl + 2 * rl * gf), GAS)
        gas_pockets += self.rect_gas > 0.05
        # sigmoid and descending colon: a chain of tubes from the top of the rectum
        y_top = float(self._sacrum(np.float32(self.zr_sig))[3] - self._sacrum(np.float32(self.zr_sig))[2]) - rr - 5
        chain = [(self.x_rect, y_top, hz + self.zr_sig)]
        for (cxp, cyp, czp) in self.sig_pts:
            chain.append((cxp, cyp, hz + self.zr_sig + czp))
        chain.append((chain[-1][0], chain[-1][1] + 5, hz + self.zr_sig + 250))
        rs = 0.9 * rr
        for a_pt, b_pt in zip(chain[:-1], chain[1:]):
            sdf, ax_y = sdf_capsule(p, a_pt, b_pt, rs, rs)
            tube = (sdf < 0) & inner
            paint(tube, ORGAN)
            paint((sdf < -4) & inner & ((p.y - ax_y) < -(rs - 4) + 2 * (rs - 4) * 0.35 * self.rect_gas), GAS)
        # free gas bubbles in the colon lumen
        for fpos, rad in self.bubbles:
            seg = min(int(fpos * (len(chain) - 1)), len(chain) - 2)
            f = fpos * (len(chain) - 1) - seg
            c = [chain[seg][i] + f * (chain[seg + 1][i] - chain[seg][i]) for i in range(3)]
            c[1] -= rs - 4 - rad  # against the anterior wall
            paint(sdf_sphere(p, c, rad) < 0, GAS, where=inner)
        gas_pockets += len(self.bubbles)

        # bladder: urine inside a wall whose thickness grows as it empties
        bl = sdf_ellipsoid(p, bl_c, bl_r)
        wall = 2.5 + 2.5 * (1 - self.bladder_fill)
        paint(bl < 0, ORGAN, where=inner)
        paint(bl < -wall, FLUID, where=inner)
        bl_bottom = bl_c[2] - bl_r[2]

        if self.sex == "male":
            ps = self.prostate_scale
            pr_r = (20 * ps, 15 * ps, 17 * ps)
            paint(sdf_ellipsoid(p, (0, bl_c[1] + 0.3 * bl_r[1], bl_bottom - 6 - pr_r[2]), pr_r) < 0, ORGAN,
                  where=inner)
            for s in (-1, 1):
                paint(sdf_ellipsoid(p, (s * 17, bl_c[1] + 0.85 * bl_r[1] + 6, bl_bottom + 6), (16, 6, 8),
                                     rotation_matrix(0, 0, s * 20)) < 0, ORGAN, where=inner)
        else:
            us = self.uterus_scale
            al = math.radians(self.anteversion)
            rot = rotation_matrix(-self.anteversion, 0, 0)  # tips the fundus anteriorly (towards -y)
            uc = (0.0, bl_c[1] + bl_r[1] + 20, bl_c[2] + 14)
            ur = (27 * us, 18 * us, 36 * us)
            paint(sdf_ellipsoid(p, uc, ur, rot) < 0, ORGAN, where=inner)
            cervix = (0.0, uc[1] + ur[2] * 0.8 * math.sin(al), uc[2] - ur[2] * 0.8 * math.cos(al))
            paint(sdf_capsule(p, cervix, (0.0, bl_c[1] + 0.5 * bl_r[1] + 12, hz - 55), 11.0, 9.0)[0] < 0, ORGAN,
                  where=inner)
            for s in (-1, 1):
                paint(sdf_ellipsoid(p, (s * min(45.0, hx - rh - 22), uc[1] + 5, uc[2] + 8), (14, 9, 11)) < 0,
                      ORGAN, where=cavity)

        # iliac / femoral vessels
        for s in (-1, 1):
            y0 = float(self._y_spine(np.float32(self.zr_top + 20)))
            a0 = (s * 16, y0 - 24, hz + self.zr_top + 20)
            a1 = (s * (hx - 18), hy - rh - 20, hz - 5)
            a2 = (s * (hx - 12), hy - rh - 26, hz - 90)
            for off, rad in (((0, 0, 0), 4.5), ((-s * 8, 5, 0), 6.0)):
                pa = [a0[i] + off[i] for i in range(3)]
                pb = [a1[i] + off[i] for i in range(3)]
                pc = [a2[i] + off[i] for i in range(3)]
                paint(sdf_capsule(p, pa, pb, rad, rad)[0] < 0, ORGAN, where=inner)
                paint(sdf_capsule(p, pb, pc, rad, rad)[0] < 0, ORGAN, where=inner)

        # ---------------------------------------------------------------- bones
        bones = Bones(n)
        # sacrum
        sac = sdf_ellipse2d(p.x, p.y - yc_s, w_s, d_s)
        sac = np.maximum(sac, np.maximum(self.zr_tip - zr, zr - self.zr_top))
        bones.add(sac, 2.0)
        # lumbar vertebrae above the sacrum (bodies, discs, arches, spinous/transverse processes)
        discs = np.zeros(n, bool)
        canal_v = np.zeros(n, bool)
        for k in range(4):
            z0 = self.zr_top + 36 * k
            zc = z0 + 9 + 13.5
            sel = (zr > z0 - 5) & (zr < z0 + 60)
            if not sel.any():
                continue
            q = p.take(sel)
            zq = zr[sel]
            yv = self._y_spine(zq)
            body_xy = sdf_ellipse2d(q.x, q.y - yv, 25.0, 17.0)
            vb = np.maximum(body_xy, np.maximum((z0 + 9) - zq, zq - (z0 + 36)))
            bones.add(vb, 1.5, sel)
            dsel = (body_xy < 0) & (zq > z0) & (zq <= z0 + 9)
            discs[np.flatnonzero(sel)[dsel]] = True
            ycan = yv + 17 + 10
            ring = sdf_ellipse2d(q.x, q.y - ycan, 18.0, 15.0)
            arch = np.maximum(np.maximum(ring, -(sdf_ellipse2d(q.x, q.y - ycan, 11.0, 8.0))), yv + 17 - q.y)
            arch = np.maximum(arch, np.maximum((z0 + 12) - zq, zq - (z0 + 33)))
            bones.add(arch, 1.5, sel)
            yv_c = float(self._y_spine(np.float32(zc)))
            sp, _ = sdf_capsule(q, (0, yv_c + 40, hz + zc), (0, yv_c + 68, hz + zc - 8), 5.0, 5.0)
            bones.add(sp, 1.5, sel)
            for s in (-1, 1):
                tp, _ = sdf_capsule(q, (s * 18, yv_c + 24, hz + zc), (s * (45 + 6 * (k == 0)), yv_c + 28, hz + zc), 6.0,
                                    5.0)
                bones.add(tp, 1.5, sel)
            can = (sdf_ellipse2d(q.x, q.y - ycan, 11.0, 8.0) < 0)
            canal_v[np.flatnonzero(sel)[can]] = True
        for s in (-1, 1):
            hxs = hx + s * self.asym
            H = (s * hxs, hy, hz)
            # femur: head, neck, greater/lesser trochanter, shaft
            bones.add(sdf_sphere(p, H, rh), 2.0)
            N = (H[0] + s * 32, hy + 4, hz - 20)
            bones.add(sdf_capsule(p, H, N, 14.0, 15.0)[0], 3.0)
            a_tr = float(self._lean(np.float32(-18.0))[0])
            G = (s * (a_tr - 27), hy + 8, hz - 20)
            bones.add(sdf_ellipsoid(p, G, (14.0, 20.0, 22.0)), 2.5)
            bones.add(sdf_capsule(p, (G[0] - s * 6, G[1] - 2, G[2] - 8), (G[0] - s * 28, G[1] - 12, G[2] - 260),
                               14.0, 14.0)[0], 5.5)
            bones.add(sdf_ellipsoid(p, (N[0] - s * 8, N[1] + 14, N[2] - 30), (9.0, 9.0, 11.0)), 2.0)
            # acetabulum: a cup around the head opening laterally, anteriorly and inferiorly
            dH = sdf_sphere(p, H, 0.0)
            cup = np.maximum(dH - (rh + 11), (rh + 2.5) - dH)
            o = np.array([s * 0.75, -0.35, -0.55])
            o /= np.linalg.norm(o)
            cup = np.maximum(cup, (p.x - H[0]) * o[0] + (p.y - H[1]) * o[1] + (p.z - H[2]) * o[2] - 4.0)
            bones.add(cup, 2.0)
            # ilium: an elliptical shell segment, thick above the acetabulum, thin wing, crest on top
            # the ellipse passes through the sacro-iliac joint (x = sacrum half-width + 2, y = sacrum centre)
            xc, yc = 20.0, hy + 5 - 15 * smoothstep(zr / 80.0)
            ex = (hxs - 12 - xc) + (0.86 * self.a_lean - 10 - hxs) * smoothstep(zr / 90.0)
            c_si = np.clip((w_s + 2 - xc) / ex, 0.0, 0.95)
            ey = np.clip((yc_s - yc) / np.sqrt(1 - c_si * c_si), 30.0, 90.0)
            u_, v_ = s * p.x - xc, p.y - yc
            th = np.arctan2(v_ / ey, u_ / ex)
            th_si = np.arccos(c_si)
            th_a = -0.3 - 0.6 * smoothstep(zr / 70.0)
            th_p = 0.5 + 1.1 * smoothstep((zr - 15) / 25.0)
            thick = (7 + 16 * np.exp(-((zr - 8) / 16) ** 2) + 5 * np.exp(-((zr - self.crest) / 7) ** 2)
                     + 12 * smoothstep((th - th_si + 0.6) / 0.5))
            shell = np.abs(sdf_ellipse2d(u_, v_, ex, ey)) - 0.5 * thick
            th_m, th_h = 0.5 * (th_a + th_p), 0.5 * (th_p - th_a)
            crest = self.crest - 12 * ((th - th_m) / th_h) ** 2
            rad = np.sqrt(u_ * u_ + v_ * v_)
            ang = np.maximum(th_a - th, th - th_p) * rad
            il = np.maximum(np.maximum(shell, ang), np.maximum(-5 - zr, zr - crest))
            il = np.maximum(il, (w_s + 2) - s * p.x)  # stops at the sacro-iliac joint
            bones.add(il, 2.0)
            # pubis (symphysis halves, superior and inferior rami) and ischium
            bones.add(sdf_capsule(p, (s * 10.5, y_sym, hz - 22), (s * 10.5, y_sym, hz + 2), 8.5, 8.5)[0], 2.0)
            bones.add(sdf_capsule(p, (H[0] - s * (rh + 4), hy - 0.5 * rh, hz + 2), (s * 12, y_sym + 2, hz - 2),
                               9.0, 8.0)[0], 2.0)
            IT = (s * (hxs - 30), hy + rh + 20, hz - 48)
            bones.add(sdf_capsule(p, (s * 12, y_sym + 4, hz - 20), IT, 7.0, 11.0)[0], 2.0)
            bones.add(sdf_capsule(p, (H[0] - s * 8, hy + 0.6 * rh, hz - 12), IT, 13.0, 12.0)[0], 2.0)
        bones.paint(paint)
        # soft tissue inside bones: discs, spinal and sacral canals
        paint(discs, ORGAN)
        paint(canal_v, FLUID)
        canal_s = (sdf_ellipse2d(p.x, p.y - (yc_s + 0.45 * d_s), 5 + 7 * t_s, 3 + 3 * t_s) < 0) & \
                  (zr > self.zr_tip + 8) & (zr < self.zr_top + 5)
        paint(canal_s, FLUID, where=t_s > 0.7)
        paint(canal_s, FAT, where=t_s <= 0.7)

        bone_tex = self.tex_bone(p.x, p.y, p.z)
        soft_tex = self.tex_soft(p.x, p.y, p.z)
        self.info = dict(sex=self.sex, bladder_fill=round(self.bladder_fill, 3),
                         adiposity=round(self.adiposity, 3), gas_pockets=int(gas_pockets),
                         femoral_head_height_mm=round(self.hz, 2))
        return paint.lab, bone_tex, soft_tex
