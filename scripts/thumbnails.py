"""Thumbnails of the example workflows (example_workflows/<name>.jpg, the picture a current frontend's Templates
menu shows): the graph drawn from its layout, groups, nodes with titles and wires, without a browser."""
from PIL import Image, ImageDraw, ImageFont

from workflow_format import TITLE_H, ui_wires

SIZE = (512, 384)
BACKGROUND, NODE, NODE_TITLE, TEXT = (32, 32, 32), (53, 53, 53), (34, 34, 34), (220, 220, 220)
WIRE_COLORS = {"IMAGE": (100, 181, 246), "LATENT": (255, 156, 249), "MODEL": (178, 157, 255),
               "CONDITIONING": (255, 160, 49), "CLIP": (255, 214, 0), "VAE": (255, 97, 97),
               "AUDIO": (100, 255, 180), "STEM_TRAJECTORY": (120, 230, 120)}


def _hex(color, alpha):
    color = color.lstrip("#")
    if len(color) == 3:
        color = "".join(c * 2 for c in color)
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4)) + (alpha,)


def render_thumbnail(ui: dict, title: str) -> Image.Image:
    boxes = [g["bounding"] for g in ui.get("groups", [])] + \
        [[n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H] for n in ui["nodes"]]
    x0 = min(b[0] for b in boxes) - 20
    y0 = min(b[1] for b in boxes) - 20
    x1 = max(b[0] + b[2] for b in boxes) + 20
    y1 = max(b[1] + b[3] for b in boxes) + 20
    scale = min(SIZE[0] / (x1 - x0), (SIZE[1] - 24) / (y1 - y0))
    ox = (SIZE[0] - (x1 - x0) * scale) / 2
    oy = 24 + (SIZE[1] - 24 - (y1 - y0) * scale) / 2

    def at(x, y):
        return (ox + (x - x0) * scale, oy + (y - y0) * scale)

    img = Image.new("RGBA", SIZE, BACKGROUND + (255,))
    layer = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default()
    for g in ui.get("groups", []):
        x, y, w, h = g["bounding"]
        draw.rectangle([at(x, y), at(x + w, y + h)], fill=_hex(g["color"], 70), outline=_hex(g["color"], 200))
        draw.text((at(x, y)[0] + 4, at(x, y)[1] + 2), g["title"], fill=TEXT + (255,), font=font)
    img = Image.alpha_composite(img, layer)
    draw = ImageDraw.Draw(img)
    types = {lnk[0]: lnk[5] for lnk in ui["links"]}
    for (key, pts), lnk in zip(ui_wires(ui), ui["links"]):
        color = WIRE_COLORS.get(types.get(lnk[0]), (160, 160, 160))
        draw.line([at(*p) for p in pts], fill=color + (255,), width=2)
    for node in ui["nodes"]:
        x, y = node["pos"]
        w, h = node["size"]
        if node["type"] == "Reroute":  # a small pill without a title, as the editor draws it
            draw.rounded_rectangle([at(x, y), at(x + w, y + h)], radius=max(1, int(h * scale / 2)), fill=NODE,
                                   outline=(10, 10, 10))
            continue
        body = _hex(node["bgcolor"], 255)[:3] if node.get("bgcolor") else NODE
        head = _hex(node["color"], 255)[:3] if node.get("color") else NODE_TITLE
        draw.rectangle([at(x, y - TITLE_H), at(x + w, y + h)], fill=body, outline=(10, 10, 10))
        draw.rectangle([at(x, y - TITLE_H), at(x + w, y)], fill=head)
        label = node.get("title") or node["type"]
        max_chars = max(3, int(w * scale / 6))
        draw.text((at(x, y - TITLE_H)[0] + 3, at(x, y - TITLE_H)[1] + 1), label[:max_chars], fill=TEXT, font=font)
    draw.text((6, 5), f"ComfyUI-STEM: {title}", fill=TEXT, font=font)
    return img.convert("RGB")
