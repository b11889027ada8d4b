"""Small markets for the admin tests, built with the services the API uses.

Every helper takes the times it needs explicitly; callers freeze the clock first when the
services check a time (listings and bookings must start at or after the current hour).
"""

import re
from datetime import datetime
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from broker.booking import listing_book
from broker.models import Contract
from core.timeutils import HOUR
from marketplace.models import Cluster, GpuModel, Listing, Organization
from marketplace.services import cluster_create, listing_create, organization_create

H100 = "h100-sxm-80gb"


def organization(name: str, role: str) -> tuple[Organization, str]:
    """An organization and the secret of its first API key."""
    org, issued = organization_create(name=name, role=role)
    return org, issued.secret


def cluster(*, provider: Organization, name: str = "c1", nodes: int = 4, gpu_model: str = H100) -> Cluster:
    return cluster_create(
        provider=provider,
        name=name,
        gpu_model=GpuModel.objects.get(slug=gpu_model),
        region="us-south-1",
        interconnect="infiniband",
        gpus_per_node=8,
        node_count=nodes,
    )


def listing(
    *,
    cluster: Cluster,
    starts_at: datetime,
    hours: int,
    nodes: int = 2,
    price: str = "2.0000",
    billing_mode: str = "committed",
) -> Listing:
    return listing_create(
        provider=cluster.provider,
        cluster=cluster,
        node_count=nodes,
        starts_at=starts_at,
        ends_at=starts_at + hours * HOUR,
        price_per_gpu_hour=Decimal(price),
        billing_mode=billing_mode,
    )


def contract(*, lab: Organization, listing: Listing, starts_at: datetime, hours: int, nodes: int = 1) -> Contract:
    """A booking, handed over by its provider at its start (so no late delivery is credited)."""
    booked = listing_book(
        lab=lab,
        listing=listing,
        gpu_count=nodes * listing.cluster.gpus_per_node,
        starts_at=starts_at,
        duration_hours=hours,
    )
    Contract.objects.filter(pk=booked.pk).update(delivered_at=starts_at)
    booked.delivered_at = starts_at
    return booked


# --- Driving the admin --------------------------------------------------------------------


def changelist_url(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def add_url(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")


def run_action(client, model, action: str, objects, **form):
    """POST an admin action for ``objects`` from the model's changelist, as the browser does,
    and follow the redirect back to the changelist once the action is done.

    Form actions take ``apply=1`` and their fields in ``form``; while such an action asks
    for input the response is its form page (no redirect). Every page shown consumes the
    messages it displays, so ``messages_of`` sees only this action's.
    """
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(obj.pk) for obj in objects], "index": 0, **form}
    return client.post(changelist_url(model), data, follow=True)


def done(response) -> bool:
    """The action ran and the admin went back to the changelist."""
    assert response.status_code == 200, response.content[:500]
    return bool(response.redirect_chain)


def messages_of(response) -> list[str]:
    """The messages the (last) page of a response showed."""
    if response.context is None or "messages" not in response.context:
        return []
    return [str(message) for message in response.context["messages"]]


def shown_secrets(response) -> list[str]:
    """The API keys a 'shown once' page shows. The page is the answer itself, never cached, and
    the secret travels in no message (a message's cookie would carry it to the next page)."""
    assert "admin/secret_shown_once.html" in [template.name for template in response.templates]
    assert "no-store" in response["Cache-Control"]
    secrets = re.findall(r'<code class="api-key-secret">([\w-]+)</code>', response.content.decode())
    cookies = " ".join(morsel.value for morsel in response.cookies.values())
    messages = " ".join(str(message) for message in response.context["messages"])
    assert secrets and not any(secret in cookies or secret in messages for secret in secrets)
    return secrets


def changeform_data(response) -> dict:
    """The POST body the browser would send back for a rendered admin change form, unchanged:
    the main form's and every inline formset's current values plus the management forms."""
    data: dict = {}

    def add_form(form):
        for name, field in form.fields.items():
            value = form[name].value()
            key = form.add_prefix(name)
            if isinstance(field.widget, forms.CheckboxInput):
                if value:
                    data[key] = "on"
                continue
            if isinstance(field.widget, forms.MultiWidget):  # a date and a time, say
                parts = value if isinstance(value, list) else field.widget.decompress(value)
                for suffix, part in zip(field.widget.widgets_names, parts, strict=True):
                    data[key + suffix] = "" if part is None else str(part)
                continue
            if value is None:
                data[key] = ""
            elif isinstance(value, list | tuple):
                data[key] = [str(item) for item in value]
            else:
                data[key] = str(value)

    add_form(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        add_form(formset.management_form)
        for form in formset.forms:
            add_form(form)
    return data


def model_admin(model) -> admin.ModelAdmin:
    return admin.site._registry[model]
