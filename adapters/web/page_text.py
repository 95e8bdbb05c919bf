"""The playground page's own words (buttons, placeholders, hints, aria-labels), sent with its config.

app.js looks each English string up in ``strings`` (falling back to English) and fills ``{fields}`` itself, so
the static files stay the same for every reader and the CSP needs no inline script.
"""

from __future__ import annotations

from adapters.common import i18n
from adapters.common.i18n import _
from bot.text import N_, NP_

PAGE_TEXT = (
    N_("imagebot playground"),
    N_("Type {command} and a description · drop, paste or attach an image to edit or vary it"),
    N_("connecting…"),
    N_("Messages"),
    N_("Attached image"),
    N_("The image you attached"),
    N_("4 by 4 grid: click cells to pick the region to change"),
    N_("Remove the image"),
    N_("With a prompt: {edit} it (only inside the region or mask, if you pick one). Without a prompt: {variations}."),
    N_("edit"),
    N_("variations"),
    N_("Named regions"),
    N_("Area to change:"),
    N_("whole image"),
    N_("inside the mask"),
    N_("clear"),
    N_("Upload a mask…"),
    N_("Attach an image"),
    N_("Message"),
    N_("Send"),
    N_("Drop an image to edit it or get variations"),
    N_("The bot answered with HTTP {status}. Please try again."),
    N_("I can't reach the bot right now (is it running?). Please try again in a moment."),
    N_("You"),
    N_("Your image"),
    N_("mask"),
    N_("Cancel"),
    N_("Cancel this request"),
    N_("Preview of the image being made"),
    N_("Generating… {seconds} s"),
    N_("Queued — #{position} in line"),
    N_("Queued…"),
    N_("edit · "),
    N_("variations · "),
    N_(" · same as your earlier request"),
    N_("Open full size"),
    N_("Download {filename}"),
    N_("Download image {index}"),
    N_("Upscale images"),
    N_("Variations and more"),
    N_("Image {index} on its own, with Zoom out and Pan"),
    N_("Upscaling image {index}"),
    N_("Variations of image {index}"),
    N_("Making variations of image {index}"),
    N_("Rerolling"),
    N_("Reroll"),
    N_("Remix"),
    N_("Vary (Subtle)"),
    N_("Making subtle variations of image {index}"),
    N_("Vary (Strong)"),
    N_("Making strong variations of image {index}"),
    N_("Zoom out 1.5x"),
    N_("Zooming out image {index} 1.5×"),
    N_("Zoom out 2x"),
    N_("Zooming out image {index} 2×"),
    N_("Vary and zoom out"),
    N_("Pan and remix"),
    N_("Pan left"),
    N_("Pan right"),
    N_("Pan up"),
    N_("Pan down"),
    N_("Panning left"),
    N_("Panning right"),
    N_("Panning up"),
    N_("Panning down"),
    N_("New prompt"),
    N_("Remixing"),
    N_("This request will cost {cost}. Go ahead?"),
    N_("Confirm"),
    N_("Starting"),
    N_("Cancelled."),
    N_("That file isn't an image I can read. Send a PNG, JPEG, WebP or GIF."),
    N_("pasted image"),
    N_("Describe the change (e.g. a dragon in the sky), or send with no text for variations"),
    N_("Cell {name} (click another cell for a range)"),
    N_("Cell {name}"),
    N_("Type what you'd like me to draw (for example: a lighthouse at dusk), or attach a picture first."),
    N_("Editing your image"),
    N_("Making variations"),
    N_("Imagining"),
    N_("online · offline generator"),
    N_("online · {provider}"),
    N_("reconnecting…"),
    N_("variation"),
    N_("Flags"),
    N_("Hi! Tell me what to draw: {example}. Drop, paste or attach a picture to edit it or get variations."),
    N_("No OPENAI_API_KEY is set, so pictures come from the built-in offline generator."),
)


# Counted words: the page picks the singular key for 1 and the plural key otherwise, which holds for every shipped
# language (Japanese has one form; the others use the singular for 1 only).
PAGE_PLURALS = (NP_("{count} image", "{count} images", 1),)


def page_strings() -> dict[str, str]:
    """English -> the reader's language for every string of the page (templates keep their ``{fields}``)."""
    strings = {text.template: _(text.template) for text in PAGE_TEXT}
    catalogue = i18n.CATALOGUES.get(i18n.current())
    for text in PAGE_PLURALS:
        plural = text.plural or text.template
        for english, count in ((text.template, 1), (plural, 2)):
            strings[english] = catalogue.ngettext(text.template, plural, count) if catalogue else english
    return strings
