"""How each source of temporary credentials is fetched (awsruntime.py's `RefreshingCredentials`
around awsmetadata.py, awsprocess.py, awssts.py, awswebidentity.py and awssso.py), and how
logs name it."""

from __future__ import annotations

import weakref

from failoverd import awsmetadata, awsprocess, awsruntime, awssso, awssts, awswebidentity
from failoverd.awscreds import (
    AssumeRole,
    AwsCredentials,
    AwsCredentialsError,
    ContainerEndpoint,
    CredentialProcess,
    InstanceMetadata,
    Refreshing,
    SsoRole,
    WebIdentityRole,
    bare,
)
from failoverd.awsruntime import RefreshingCredentials
from failoverd.clock import Clock, SystemClock
from failoverd.http1 import HttpClient

__all__ = ["describe", "refreshing"]


def refreshing(source: Refreshing, client: HttpClient,
               given: Clock | None) -> RefreshingCredentials:
    """A `RefreshingCredentials` fetching from `source` (awsruntime.open_source keeps one per
    client, source and clock)."""
    clock = given or SystemClock()
    # weakly: `_refreshing` holds this by the client, which must not keep itself alive
    client_ref = weakref.ref(client)
    # an assumed role's own source: what signs its AssumeRole calls
    inner = (awsruntime.open_source(source.source, client=client, clock=given)
             if isinstance(source, AssumeRole) else None)

    async def fetch() -> AwsCredentials:
        if isinstance(source, CredentialProcess):
            return await awsprocess.run(source, clock)
        current = client_ref()
        if current is None:  # pragma: no cover - the daemon's client outlives its providers
            raise AwsCredentialsError("the HTTP client is closed")
        if isinstance(source, ContainerEndpoint):
            return await awsmetadata.fetch_container(current, source)
        if isinstance(source, InstanceMetadata):
            return await awsmetadata.fetch_instance(current, source)
        if isinstance(source, SsoRole):
            return await awssso.fetch(current, source, clock)
        if isinstance(source, WebIdentityRole):
            return await awswebidentity.fetch(current, source, clock)
        if inner is None:  # pragma: no cover - made above for every AssumeRole
            raise AwsCredentialsError(f"{source!r} has no source")
        return await awssts.assume_role(current, source, inner, clock)

    return RefreshingCredentials(fetch, clock, describe(source))


def describe(source: Refreshing) -> str:
    """The source as logs and errors name it (never with a secret)."""
    if isinstance(source, ContainerEndpoint):
        return f"the container credentials endpoint {bare(source.url)}"
    if isinstance(source, InstanceMetadata):
        return f"the instance metadata service at {bare(source.endpoint)}"
    if isinstance(source, CredentialProcess):
        return f"credential_process {source.program} of profile [{source.profile}]"
    if isinstance(source, SsoRole):
        return (f"IAM Identity Center role {source.role_name} of account {source.account_id} "
                f"(profile [{source.profile}])")
    if isinstance(source, WebIdentityRole):
        return (f"web identity role {source.role_arn} "
                f"({awswebidentity.token_name(source)} {source.token_file})")
    return f"role {source.role_arn} (profile [{source.profile}])"
