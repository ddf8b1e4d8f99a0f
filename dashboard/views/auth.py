"""Sign-in: Django's login view, refusing attempts after repeated failures."""

from typing import Any

from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse

from dashboard import audit
from dashboard.services import signin
from dashboard.sso.provider import current_sso

LOCAL_OFF = "Password sign-in is turned off here: sign in with {provider}."


class SignInView(LoginView):
    """Sign a user in, unless that name from that address, or the address, failed too often."""

    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        sso = current_sso()
        local = sso is None or sso.local_accounts
        return super().get_context_data(sso=sso, local_accounts=local, **kwargs)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        sso = current_sso()
        if sso is not None and not sso.local_accounts:
            # Refused before any lookup; the backend refuses too (the admin site's login).
            message = LOCAL_OFF.format(provider=sso.display_name)
            context = self.get_context_data(form=self.get_form(), local_refused=message)
            return self.render_to_response(context, status=403)
        username = request.POST.get("username", "")
        throttle = signin.signin_throttle(username=username, ip=audit.client_ip(request))
        if throttle is None:
            return super().post(request, *args, **kwargs)
        signin.signin_refuse(username=username, throttle=throttle, request=request)
        # The bound form is never validated: validating it would check the password.
        context = self.get_context_data(form=self.get_form(), throttled=throttle.message)
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(throttle.retry_after)
        return response
