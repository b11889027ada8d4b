import os

from django.core.wsgi import get_wsgi_application

from core.wsgi import refuse_unusable_charsets

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = refuse_unusable_charsets(get_wsgi_application())
